package release_test

import (
	"fmt"

	"github.com/switchyard-go/switchyard/release"
)

// A plan as `switchyard release run` reads it: the defaults are filled in, and a mistake is
// refused with what to write instead.
func ExampleParsePlan() {
	plan, err := release.ParsePlan([]byte(`
channel: trade
new: blue
steps:
  - {percent: 1, hold: 30s}
  - {percent: 10, hold: 1m}
  - {percent: 100, hold: 2m}
analysis:
  max_p99_ratio: 1.5
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, s := range plan.Steps {
		fmt.Printf("step %d: blue %g %% (rule blue_percent %g) for %v\n", i+1, s.Percent, plan.BluePercent(s.Percent), s.Hold)
	}
	fmt.Printf("judged after %d requests; at most %g point more errors than %s; p99 at most %g×; on breach %s; at end %s\n",
		plan.Analysis.MinRequests, plan.Analysis.MaxErrorRateIncrease, plan.Old(), plan.Analysis.MaxP99Ratio, plan.OnBreach, plan.AtEnd)

	_, err = release.ParsePlan([]byte("channel: trade\nnew: blue\nsteps: [{percent: 50, hold: 1m}, {percent: 10, hold: 1m}]\n"))
	fmt.Println(err)
	// Output:
	// step 1: blue 1 % (rule blue_percent 1) for 30s
	// step 2: blue 10 % (rule blue_percent 10) for 1m0s
	// step 3: blue 100 % (rule blue_percent 100) for 2m0s
	// judged after 100 requests; at most 1 point more errors than green; p99 at most 1.5×; on breach switch-back; at end done
	// release: plan: step 2: percent 10 is not above step 1's 50: write the steps in increasing order
}
