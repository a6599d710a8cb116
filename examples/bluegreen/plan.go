package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/release"
	"github.com/switchyard-go/switchyard/traffic"
)

// The traffic shift of the release is a release plan (package release), run by a
// release.Runner in the demo's process as `switchyard release run plan.yaml` would run it:
//
//	channel: trade
//	new: blue
//	steps: [{percent: 1, hold: 1s}, {percent: 10, hold: 1s}, {percent: 50, hold: 1s}, {percent: 100, hold: 1s}]
//	analysis: {min_requests: 20}   # max_error_rate_increase: 1 point, the default
//
// The demo follows the runner through the rule's writes (an etcd watch of the channel's key:
// each step and the switch-back is one write, carrying its verdict as the rule's reason) and
// prints a row of the table per step and the verdicts from the plan's progress.

// Defaults of the plan's holds and minimum sample (-hold, -min-requests): at the demo's
// ~2,000 requests/s a 1 % canary serves about 20 requests/s, so each app has the minimum
// sample about a second into the canary.
const (
	defaultHold        = time.Second
	defaultMinRequests = 20
	// planPoll is how often the runner reads the instances' /stats: the demo's holds are
	// short (release.DefaultPoll is 250 ms).
	planPoll = 100 * time.Millisecond
)

// planSteps are the new color's shares, in order.
var planSteps = []float64{1, 10, 50, 100}

// demoPlan is the demo's release plan: blue (restarted as v2) from 1 % through 10 % and 50 %
// to 100 %, each step held for hold once each app has minRequests requests on blue.
func demoPlan(hold time.Duration, minRequests int) (release.Plan, error) {
	if hold == 0 {
		hold = defaultHold
	}
	if minRequests == 0 {
		minRequests = defaultMinRequests
	}
	plan := release.Plan{Channel: "trade", New: deploy.Blue, Analysis: release.Analysis{MinRequests: minRequests}}
	for _, p := range planSteps {
		plan.Steps = append(plan.Steps, release.Step{Percent: p, Hold: release.Duration(hold)})
	}
	plan = plan.WithDefaults()
	return plan, plan.Validate()
}

// planRun is what the plan did.
type planRun struct {
	progress release.Progress
	// switchedBack is the failed step's verdict, nil if the plan succeeded.
	switchedBack *release.Verdict
	canary       *stats // the row of the step that failed
}

// runPlan runs plan under the load, a row of the table per step (and, after a switch-back,
// one more phase of load with all traffic on the old color), each step's verdict printed
// under its row. It returns once the plan has ended: succeeded (err nil, the new color at
// the last step's share) or switched back (planRun.switchedBack).
func (d *demo) runPlan(ctx context.Context, out io.Writer, l *load, phase time.Duration, plan release.Plan, total *stats) (planRun, error) {
	var res planRun
	runner, err := release.New(release.Config{Client: d.cli, Poll: planPoll, Owner: "bluegreen demo", Logger: d.log})
	if err != nil {
		return res, err
	}
	key := deploy.ChannelKey(deploy.DefaultPrefix, plan.Channel)
	from, err := d.cli.Get(ctx, key)
	if err != nil {
		return res, err
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	writes := d.cli.Watch(wctx, key, clientv3.WithRev(from.Header.Revision+1))

	type ended struct {
		p   release.Progress
		err error
	}
	done := make(chan ended, 1)
	rctx, stopRunner := context.WithCancel(ctx)
	defer stopRunner()
	go func() {
		p, err := runner.Run(rctx, plan)
		done <- ended{p, err}
	}()

	var (
		row     *stats
		name    string
		lastRev = from.Header.Revision
		shown   int // verdicts printed
	)
	showVerdicts := func(p release.Progress) {
		for _, v := range p.Verdicts[min(shown, len(p.Verdicts)):] {
			fmt.Fprintln(out, "   guard:", v.Explanation)
		}
		shown = max(shown, len(p.Verdicts))
	}
	// written handles one rule write of the runner: the row of the step before ends, with
	// its verdict, and the row of the step the write began starts.
	written := func(rev int64, rule traffic.Rule) error {
		lastRev = rev
		if row != nil {
			l.end(out, name, row, total)
			if p, err := runner.Status(ctx, plan.Channel); err == nil { // the step's verdict was written before the next step's rule
				showVerdicts(p)
			}
		}
		drained := ""
		switch rule.BluePercent {
		case 0:
			drained, name = "blue", "switched back: all on green v1"
		case 100:
			drained, name = "green", "plan: 100 % blue v2, green drained"
		default:
			name = "plan: " + strconv.FormatFloat(rule.BluePercent, 'f', -1, 64) + " % blue v2"
		}
		res.canary = row
		row = l.begin()
		return d.afterStepAt(ctx, drained, rev)
	}
	for {
		select {
		case wr, ok := <-writes:
			if !ok || wr.Err() != nil {
				return res, fmt.Errorf("watching the rule of channel %s: %v", plan.Channel, errors.Join(wctx.Err(), wr.Err()))
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				rule, err := traffic.Unmarshal(ev.Kv.Value)
				if err != nil {
					return res, err
				}
				if err := written(ev.Kv.ModRevision, rule); err != nil {
					return res, err
				}
			}
		case e := <-done:
			stopWatch()
			res.progress = e.p
			if e.err != nil && !errors.Is(e.err, release.ErrSwitchedBack) {
				return res, e.err
			}
			// The switch-back's write may not have come through the watch yet.
			now, err := d.cli.Get(ctx, key)
			if err != nil {
				return res, err
			}
			if len(now.Kvs) == 1 && now.Kvs[0].ModRevision > lastRev {
				rule, err := traffic.Unmarshal(now.Kvs[0].Value)
				if err != nil {
					return res, err
				}
				if err := written(now.Kvs[0].ModRevision, rule); err != nil {
					return res, err
				}
			}
			if e.err == nil { // succeeded: the last step's row ends here
				l.end(out, name, row, total)
				showVerdicts(e.p)
				return res, nil
			}
			// Switched back: the failed step's verdict, then a phase with all on green.
			showVerdicts(e.p)
			v := e.p.Verdicts[len(e.p.Verdicts)-1]
			res.switchedBack = &v
			time.Sleep(phase)
			l.end(out, name, row, total)
			return res, nil
		}
	}
}

// guardVerdict prints the verdict of a release the guard switched back: the guard's verdict,
// the time from the first bad response the load saw to the switch-back (the rule write),
// the failed requests against the bound canary share × failure rate × that time × request
// rate, and that the release stopped there. It returns whether the failures stayed within
// the bound (the run fails either way: requests failed).
func guardVerdict(out io.Writer, pr planRun, firstBad time.Time, badV2 float64, total *stats, drainedWork int, reasons []string) bool {
	v := pr.switchedBack
	fmt.Fprintf(out, "\nverdict: SWITCHED BACK — the guard worked: v2 failed its canary and all traffic went back to v1 (green) by itself\n")
	fmt.Fprintln(out, "   the guard's verdict:", v.Explanation)
	pct := func(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) }
	ms := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + " s" }
	var detect time.Duration
	if firstBad.IsZero() {
		fmt.Fprintln(out, "   the load saw no failed call before the switch-back")
	} else {
		detect = v.SwitchedBackAt.Sub(firstBad)
		fmt.Fprintf(out, "   first bad response %s, switch-back written %s: %s from the first bad response to the switch-back (the guard's own measure, from the first poll with the minimum sample: %s)\n",
			firstBad.Format("15:04:05.000"), v.SwitchedBackAt.Format("15:04:05.000"), ms(detect), ms(v.Detection()))
	}
	// The bound: the canary's share of the requests in that time, failing at -bad-v2's rate.
	// The gateway decides each call's color at random, so the canary's calls in that time
	// vary: allow 3 standard deviations of that count, and 1 for the first bad response,
	// which starts the clock.
	c := pr.canary
	if c == nil { // cannot be: the plan's first step is a write before the switch-back's
		c = newStats()
	}
	rate := 0.0
	if c != nil && c.ended.After(c.begun) {
		rate = float64(c.n) / c.ended.Sub(c.begun).Seconds()
	}
	share := v.Percent / 100
	calls := share * detect.Seconds() * rate // the canary's expected calls in the detection time
	expected := calls * badV2
	bound := 1 + expected + 3*badV2*math.Sqrt(calls)
	within := float64(total.failed) <= bound
	fmt.Fprintf(out, "   %d of %d requests failed; bound: %s %% canary × %s %% failing (-bad-v2) × %s × %.0f requests/s (the step's %d requests over %s) = %.1f expected,\n",
		total.failed, total.n, pct(v.Percent), pct(100*badV2), ms(detect), rate, c.n, ms(c.ended.Sub(c.begun)), expected)
	word := "within the bound"
	if !within {
		word = "ABOVE THE BOUND"
	}
	fmt.Fprintf(out, "      + 1 (the first bad response) + 3σ of the gateway's random split of the canary's %.1f calls (3 × %s %% × √%.1f = %.1f) = %.1f: %s\n",
		calls, pct(100*badV2), calls, 3*badV2*math.Sqrt(calls), bound, word)
	fmt.Fprintf(out, "   %d sticky violations; %d messages or job runs on a drained color\n", total.violations, drainedWork)
	for _, why := range reasons {
		fmt.Fprintln(out, "   on a drained color:", why)
	}
	fmt.Fprintln(out, "   the release stopped there: blue (v2) stays drained and all traffic is on green (v1); fix v2 and release again")
	return within && total.violations == 0 && drainedWork == 0
}
