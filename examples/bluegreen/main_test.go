package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testHold and testMinRequests are the release plan's holds and minimum sample in the tests:
// short, and a minimum the 1 % canary reaches within about a second at the load of 4 callers
// under the race detector.
const (
	testHold        = 100 * time.Millisecond
	testMinRequests = 5
)

// TestReleaseIsLossless runs the whole release with the shortest phases that still put load
// through each one (a phase's load begins once its step has taken effect), the traffic shift
// run by the release plan (1 %, 10 %, 50 %, 100 % blue v2, each step judged by its guard):
// run reports success only if the plan promoted blue to 100 %, no request failed, no v2
// order met a v1 inventory, and no MQ message or job run was handled on a drained color
// (judged from events, see the package doc).
func TestReleaseIsLossless(t *testing.T) {
	var out strings.Builder
	ok, err := run(&out, options{phase: 150 * time.Millisecond, workers: 4, hold: testHold, minRequests: testMinRequests}) // short phases, 4 callers
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !ok || !strings.Contains(out.String(), "verdict: LOSSLESS") {
		t.Fatal("the release was not lossless")
	}
	for i, p := range planSteps {
		if want := fmt.Sprintf("guard: step %d (%g %%) passed: ", i+1, p); !strings.Contains(out.String(), want) {
			t.Fatalf("the plan's verdicts lack %q", want)
		}
	}
	if !strings.Contains(out.String(), "finish (all v2, 50/50)") {
		t.Fatal("the release did not go on to green's restart and the finish after the plan")
	}
	if strings.Count(out.String(), "\n") < 16 {
		t.Fatal("the report is missing phases")
	}
}

// TestBadV2IsSwitchedBack runs the release with v2 inventory failing half its calls: the
// plan's guard must switch back during the canary (step 1, 1 %) by itself, the demo must stop
// the release there (no green restart, no finish), and its verdict must say so, report the
// time from the first bad response to the switch-back, and count the failed requests within
// the printed bound (canary share × failure rate × that time × request rate, with the
// allowances it names). run reports failure: requests failed.
func TestBadV2IsSwitchedBack(t *testing.T) {
	var out strings.Builder
	ok, err := run(&out, options{phase: 150 * time.Millisecond, workers: 4, badV2: 0.5, hold: testHold, minRequests: testMinRequests})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Fatal("run reported success although requests failed")
	}
	o := out.String()
	if !strings.Contains(o, "verdict: SWITCHED BACK — the guard worked") {
		t.Fatal("the guard did not switch back, or the verdict does not say so")
	}
	if !strings.Contains(o, "the guard's verdict: step 1 (1 %) failed: ") {
		t.Fatal("the guard's verdict is not the canary's (step 1, 1 %) failure")
	}
	if strings.Contains(o, "restart green as v2") || strings.Contains(o, "finish (all") || strings.Contains(o, "plan: 10 % blue v2") {
		t.Fatal("the release went on after the switch-back")
	}
	if !strings.Contains(o, "\nswitched back: all on green v1") {
		t.Fatal("no phase ran with all traffic back on green")
	}
	m := regexp.MustCompile(`([0-9.]+) s from the first bad response to the switch-back`).FindStringSubmatch(o)
	if m == nil {
		t.Fatal("the verdict does not report the time from the first bad response to the switch-back")
	}
	detect, _ := strconv.ParseFloat(m[1], 64)
	f := regexp.MustCompile(`(\d+) of (\d+) requests failed; bound: `).FindStringSubmatch(o)
	b := regexp.MustCompile(`= ([0-9.]+): (within the bound|ABOVE THE BOUND)`).FindStringSubmatch(o)
	if f == nil || b == nil {
		t.Fatal("the verdict does not give the failed requests and their bound")
	}
	failed, _ := strconv.Atoi(f[1])
	bound, _ := strconv.ParseFloat(b[1], 64)
	t.Logf("first bad response to switch-back: %.3f s; %d requests failed, bound %.1f", detect, failed, bound)
	if detect <= 0 || failed == 0 {
		t.Fatalf("detection %.3f s with %d failed requests: the load saw no bad response before the switch-back", detect, failed)
	}
	if float64(failed) > bound || b[2] != "within the bound" {
		t.Fatalf("%d requests failed, above the printed bound %.1f", failed, bound)
	}
}

// TestKillCanaryLosesOnlyTheCallsInFlight runs -fault kill-canary with short phases: the blue
// (v2) inventory dies without cleanup at 10 %, and run reports success only if every failed
// call was one the dead canary's caller (order@blue) had in flight or took before the gateway
// stopped deciding blue for it, that stopped within seconds, no call went from v2 order to v1
// inventory, and the release then finished.
func TestKillCanaryLosesOnlyTheCallsInFlight(t *testing.T) {
	var out strings.Builder
	ok, err := run(&out, options{phase: 150 * time.Millisecond, workers: 4, fault: killCanary})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !ok || !strings.Contains(out.String(), " 0 calls crossed from new code to old code") {
		t.Fatal("the loss was not bounded by the calls in flight at the dead canary's caller, or a call crossed from v2 to v1")
	}
	if !strings.Contains(out.String(), "its record still in etcd then: true") {
		t.Fatal("the killed instance's record left etcd at once: the kill cleaned up")
	}
	if !strings.Contains(out.String(), "finish (all v2, 50/50)") {
		t.Fatal("the release did not finish after the kill")
	}
}

// TestNaiveReleaseLosesRequests: the same release without switchyard fails requests (the
// comparison -naive prints would otherwise show nothing).
func TestNaiveReleaseLosesRequests(t *testing.T) {
	var out strings.Builder
	failed, total, err := runNaive(&out, 100*time.Millisecond, 4)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("naive: %d of %d requests failed", failed, total)
	if failed == 0 {
		t.Fatal("the naive rolling restart lost no request; the demo's comparison would be empty")
	}
}
