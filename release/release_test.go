package release_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/release"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// greeter answers SayHello with its instance ID; a fraction failRate of its calls (spread
// evenly: call n fails when floor(n·rate) grows) fails with codes.Internal, a server-side
// failure that lifecycle counts as an error.
type greeter struct {
	greeterpb.UnimplementedGreeterServer
	id       string
	failRate float64
	calls    atomic.Int64
}

func (g *greeter) SayHello(context.Context, *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	n := float64(g.calls.Add(1))
	if int64(n*g.failRate) > int64((n-1)*g.failRate) {
		return nil, status.Error(codes.Internal, "v2 is broken")
	}
	return &greeterpb.HelloReply{Instance: g.id}, nil
}

// instance starts a lifecycle instance of app with color (serving /stats on its admin
// server), whose greeter fails failRate of its calls, and stops it at cleanup.
func instance(t *testing.T, cli *clientv3.Client, app, id string, color deploy.Color, failRate float64) {
	t.Helper()
	inst, err := lifecycle.New(lifecycle.Config{
		Client: cli, App: app, ID: id, Color: color, Version: "v-" + string(color), Warmup: -1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 50 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 3 * time.Second,
		TTL: 2 * time.Second, Logger: testutil.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &greeter{id: id, failRate: failRate})
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// fixture is a release of app order in channel trade, open, with a green instance (the old
// version) and a blue one (the new), whose calls fail at badRate.
type fixture struct {
	cli *clientv3.Client
	ctl *traffic.Controller
}

func setup(t *testing.T, badRate float64) fixture {
	t.Helper()
	cli := etcdtest.Start(t).Client(t)
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	instance(t, cli, "order", "order-green", deploy.Green, 0)
	instance(t, cli, "order", "order-blue", deploy.Blue, badRate)
	return fixture{cli: cli, ctl: ctl}
}

// runner returns a Runner named owner polling every 50 ms.
func (f fixture) runner(t *testing.T, owner string) *release.Runner {
	t.Helper()
	return f.runnerPolling(t, owner, 50*time.Millisecond)
}

// runnerPolling returns a Runner named owner polling every poll.
func (f fixture) runnerPolling(t *testing.T, owner string, poll time.Duration) *release.Runner {
	t.Helper()
	r, err := release.New(release.Config{Client: f.cli, Poll: poll, Timeout: 300 * time.Millisecond,
		Owner: owner, LockTTL: 2 * time.Second, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type result struct {
	p   release.Progress
	err error
}

// start runs plan on r in the background; cancel stops it, and cleanup waits for it.
func start(t *testing.T, r *release.Runner, plan release.Plan) (done <-chan result, cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan result, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		p, err := r.Run(ctx, plan)
		ch <- result{p, err}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ch, cancel
}

// load calls order through the registry resolver and the weighted balancer, as fast as it
// answers, until the test ends. It counts the calls the new color (blue) served, failed
// ones included (only blue fails), and notes when they reached min.
type load struct {
	blue, green, failed atomic.Int64
	min                 int64
	sampleAt            atomic.Pointer[time.Time]
}

func startLoad(t *testing.T, cli *clientv3.Client, min int) *load {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := testutil.Greeter(t, "switchyard:///order", grpc.WithResolvers(rb))
	l := &load{min: int64(min)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			r, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
			switch {
			case status.Code(err) == codes.Internal:
				l.failed.Add(1)
				l.newServed()
			case err != nil:
			case r.GetInstance() == "order-blue":
				l.blue.Add(1)
				l.newServed()
			default:
				l.green.Add(1)
			}
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return l
}

func (l *load) newServed() {
	if l.blue.Load()+l.failed.Load() == l.min {
		now := time.Now()
		l.sampleAt.Store(&now)
	}
}

// waitProgress waits until the channel's progress satisfies cond and returns it.
func waitProgress(t *testing.T, r *release.Runner, what string, cond func(release.Progress) bool) release.Progress {
	t.Helper()
	var last release.Progress
	var lastErr error
	defer func() {
		if t.Failed() {
			t.Logf("last progress read: %+v (err %v)", last, lastErr)
		}
	}()
	testutil.Eventually(t, what, func() bool {
		p, err := r.Status(context.Background(), "trade")
		last, lastErr = p, err
		return err == nil && cond(p)
	})
	return last
}

// blue reads the rule's blue percent and reason.
func blue(t *testing.T, ctl *traffic.Controller) traffic.Rule {
	t.Helper()
	rule, err := ctl.Get(context.Background(), "trade")
	if err != nil {
		t.Fatal(err)
	}
	return rule
}

// rules records every version of the channel's rule from now on.
type rules struct {
	mu   sync.Mutex
	list []traffic.Rule
}

func watchRules(t *testing.T, cli *clientv3.Client) *rules {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := cli.Watch(ctx, deploy.ChannelKey(deploy.DefaultPrefix, "trade"))
	rs := &rules{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for resp := range w {
			for _, ev := range resp.Events {
				if r, err := traffic.Unmarshal(ev.Kv.Value); err == nil {
					rs.mu.Lock()
					rs.list = append(rs.list, r)
					rs.mu.Unlock()
				}
			}
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return rs
}

func (rs *rules) percents() []float64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var out []float64
	for _, r := range rs.list {
		out = append(out, r.BluePercent)
	}
	return out
}

func plan(min int, steps ...release.Step) release.Plan {
	return release.Plan{Channel: "trade", New: deploy.Blue, Steps: steps, Analysis: release.Analysis{MinRequests: min}}
}

func step(p float64, hold time.Duration) release.Step {
	return release.Step{Percent: p, Hold: release.Duration(hold)}
}

// Every step passes: the plan succeeds with blue at the last step's share, each step a
// rule write whose reason says why, and a verdict per step with its figures.
func TestPromote(t *testing.T) {
	f := setup(t, 0)
	rs := watchRules(t, f.cli)
	startLoad(t, f.cli, 0)
	r := f.runner(t, "runner-1")
	done, _ := start(t, r, plan(20, step(10, 200*time.Millisecond), step(50, 200*time.Millisecond), step(100, 200*time.Millisecond)))
	res := testutil.Receive(t, "the plan to end", done)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	p := res.p
	if p.State != release.Succeeded || p.Step != 2 || len(p.Verdicts) != 3 {
		t.Fatalf("progress: state %s step %d verdicts %+v", p.State, p.Step, p.Verdicts)
	}
	for i, v := range p.Verdicts {
		if v.Outcome != "passed" || v.Step != i || len(v.Figures) != 1 || v.Figures[0].NewRequests < 20 || v.Figures[0].NewErrors != 0 {
			t.Errorf("verdict %d: %+v", i, v)
		}
	}
	if v := p.Verdicts[0].Explanation; !strings.HasPrefix(v, "step 1 (10 %) passed: order: blue 0.0 % errors over ") || !strings.Contains(v, "vs green 0.0 % over") {
		t.Errorf("verdict: %q", v)
	}
	rule := blue(t, f.ctl)
	if rule.BluePercent != 100 || !rule.Releasing {
		t.Errorf("rule at the end: %+v; want blue 100, the release still open", rule)
	}
	if !strings.HasPrefix(rule.Reason, "release step 3/3 (blue 100 %): step 2 (50 %) passed:") {
		t.Errorf("the last rule write's reason: %q", rule.Reason)
	}
	if got := rs.percents(); len(got) != 3 || got[0] != 10 || got[1] != 50 || got[2] != 100 {
		t.Errorf("rule writes: blue %v; want 10, 50, 100", got)
	}
	if st, err := r.Status(context.Background(), "trade"); err != nil || st.State != release.Succeeded || st.Runner != "" {
		t.Errorf("status after the end: %s, runner %q, %v", st.State, st.Runner, err)
	}
}

// Blue fails 30 % of its calls: once it has the minimum sample the step fails, traffic goes
// back to green at once, and the verdict says why with the figures. The time from the
// minimum sample (as the clients counted it) to the switch-back is measured, polling every
// 50 ms and every 250 ms (the default).
func TestBreachSwitchesBack(t *testing.T) {
	for _, poll := range []time.Duration{50 * time.Millisecond, release.DefaultPoll} {
		t.Run("poll "+poll.String(), func(t *testing.T) { testBreach(t, poll) })
	}
}

func testBreach(t *testing.T, poll time.Duration) {
	const min = 50
	f := setup(t, 0.3)
	r := f.runnerPolling(t, "runner-1", poll)
	done, _ := start(t, r, plan(min, step(20, 5*time.Second), step(100, time.Second)))
	waitProgress(t, r, "step 1 to begin", func(p release.Progress) bool { return p.State == release.Running })
	l := startLoad(t, f.cli, min)
	res := testutil.Receive(t, "the plan to end", done)
	if !errors.Is(res.err, release.ErrSwitchedBack) {
		t.Fatalf("Run: %v; want ErrSwitchedBack", res.err)
	}
	p := res.p
	if p.State != release.SwitchedBack || len(p.Verdicts) != 1 {
		t.Fatalf("progress: %s, verdicts %+v", p.State, p.Verdicts)
	}
	v := p.Verdicts[0]
	if v.Outcome != "failed" || !strings.HasPrefix(v.Explanation, "step 1 (20 %) failed: order: blue error rate ") ||
		!strings.Contains(v.Explanation, "vs green 0.0 % over") || !strings.Contains(v.Explanation, "switched back in") ||
		res.err.Error() != "release: "+v.Explanation {
		t.Errorf("verdict %q, error %q", v.Explanation, res.err)
	}
	fig := v.Figures[0]
	if fig.NewRequests < min || fig.NewErrorPct < 20 || fig.OldErrors != 0 {
		t.Errorf("figures %+v", fig)
	}
	rule := blue(t, f.ctl)
	if rule.BluePercent != 0 || !strings.Contains(rule.Reason, "failed") || !strings.HasSuffix(rule.Reason, "all traffic back to green") {
		t.Errorf("rule after the breach: blue %v, reason %q", rule.BluePercent, rule.Reason)
	}
	sampleAt := l.sampleAt.Load()
	if sampleAt == nil {
		t.Fatalf("the clients never saw %d calls on blue, yet the step failed", min)
	}
	detection := v.SwitchedBackAt.Sub(*sampleAt)
	t.Logf("detection to switch-back: %v from the clients' %dth call on blue (runner's own measure from its first poll with the sample: %v); %d calls failed, %d blue, %d green",
		detection, min, v.Detection(), l.failed.Load(), l.blue.Load(), l.green.Load())
	if detection > poll+time.Second {
		t.Errorf("switched back %v after the minimum sample, polling every %v; the goal is under 1 s", detection, poll)
	}
}

// Pause holds the step past its hold (the figures keep coming); resume lets it pass.
func TestPauseResume(t *testing.T) {
	const hold = 200 * time.Millisecond
	f := setup(t, 0)
	r := f.runner(t, "runner-1")
	done, _ := start(t, r, plan(20, step(10, hold), step(100, hold)))
	waitProgress(t, r, "step 1 to begin", func(p release.Progress) bool { return p.State == release.Running })
	// Paused before any traffic, so the step cannot have passed yet.
	p, err := r.Command(context.Background(), "trade", release.Pause)
	if err != nil || p.State != release.Paused || p.Step != 0 {
		t.Fatalf("pause: %s at step %d, %v", p.State, p.Step, err)
	}
	if !strings.HasPrefix(p.Note, "paused by runner-1 at ") {
		t.Errorf("note %q", p.Note)
	}
	startLoad(t, f.cli, 0)
	// Well past the hold, with the minimum sample, the step still holds.
	p = waitProgress(t, r, "figures well past the hold while paused", func(p release.Progress) bool {
		return !p.JudgeableAt.IsZero() && p.FiguresAt.Sub(p.JudgeableAt) > 3*hold
	})
	if p.State != release.Paused || p.Step != 0 || len(p.Verdicts) != 0 || blue(t, f.ctl).BluePercent != 10 {
		t.Fatalf("paused: %s at step %d, verdicts %+v", p.State, p.Step, p.Verdicts)
	}
	if _, err := r.Command(context.Background(), "trade", release.Pause); err == nil || !strings.Contains(err.Error(), "is paused, not running: nothing to pause") {
		t.Errorf("a second pause: %v", err)
	}
	if p, err = r.Command(context.Background(), "trade", release.Resume); err != nil || p.State == release.Paused {
		t.Fatalf("resume: %s, %v", p.State, err)
	}
	res := testutil.Receive(t, "the plan to end", done)
	if res.err != nil || res.p.State != release.Succeeded || blue(t, f.ctl).BluePercent != 100 {
		t.Fatalf("after resume: %s, %v", res.p.State, res.err)
	}
	if _, err := r.Command(context.Background(), "trade", release.Resume); err == nil || !strings.Contains(err.Error(), "has ended (succeeded at step 2)") {
		t.Errorf("resume after the end: %v", err)
	}
}

// A runner stopped mid-step leaves the plan where it was; the next one resumes that step
// (same start, same moment it could be judged, so the hold goes on), not the plan from the
// start.
func TestRestartResumesTheStep(t *testing.T) {
	f := setup(t, 0)
	startLoad(t, f.cli, 0)
	rs := watchRules(t, f.cli)
	pl := plan(20, step(10, 100*time.Millisecond), step(50, time.Hour), step(100, 100*time.Millisecond))
	r1 := f.runner(t, "runner-1")
	done1, stop1 := start(t, r1, pl)
	mid := waitProgress(t, r1, "step 2 to be judgeable", func(p release.Progress) bool { return p.Step == 1 && !p.JudgeableAt.IsZero() })
	stop1()
	res := testutil.Receive(t, "runner-1 to stop", done1)
	if !errors.Is(res.err, context.Canceled) || !strings.Contains(res.err.Error(), "stays running at step 2") {
		t.Fatalf("runner-1 stopped: %v", res.err)
	}
	if p := waitProgress(t, r1, "the lock to go", func(p release.Progress) bool { return p.Runner == "" }); p.State != release.Running || p.Step != 1 {
		t.Fatalf("after runner-1: %s at step %d", p.State, p.Step+1)
	}
	r2 := f.runner(t, "runner-2")
	done2, _ := start(t, r2, pl)
	took := waitProgress(t, r2, "runner-2 to take over", func(p release.Progress) bool { return p.Runner == "runner-2" && p.Owner == "runner-2" })
	if took.Step != 1 || !took.StepStarted.Equal(mid.StepStarted) || !took.JudgeableAt.Equal(mid.JudgeableAt) || len(took.Verdicts) != 1 {
		t.Fatalf("runner-2 took over at step %d started %v judgeable %v (verdicts %d); runner-1 left step 2 started %v judgeable %v",
			took.Step+1, took.StepStarted, took.JudgeableAt, len(took.Verdicts), mid.StepStarted, mid.JudgeableAt)
	}
	if p, err := r1.Command(context.Background(), "trade", release.Promote); err != nil || p.Step != 2 {
		t.Fatalf("promote: step %d, %v", p.Step+1, err)
	}
	res = testutil.Receive(t, "runner-2 to end the plan", done2)
	if res.err != nil || res.p.State != release.Succeeded {
		t.Fatalf("runner-2: %s, %v", res.p.State, res.err)
	}
	p := res.p
	if len(p.Verdicts) != 3 || p.Verdicts[1].Outcome != "promoted" || !strings.Contains(p.Verdicts[1].Explanation, "step 2 (50 %) promoted: promoted by runner-1 (order: blue ") || p.Owner != "runner-2" {
		t.Fatalf("verdicts %+v, owner %s", p.Verdicts, p.Owner)
	}
	if got := rs.percents(); len(got) != 3 || got[0] != 10 || got[1] != 50 || got[2] != 100 {
		t.Errorf("rule writes: blue %v; want 10, 50, 100 (no step written twice, nothing from the start again)", got)
	}
}

// While a runner drives the channel a second one is refused, naming the holder; abort from
// elsewhere switches back and ends the first.
func TestSecondRunnerRefusedAndAbort(t *testing.T) {
	f := setup(t, 0)
	pl := plan(20, step(10, time.Minute), step(100, time.Minute))
	r1 := f.runner(t, "runner-1")
	done1, _ := start(t, r1, pl)
	waitProgress(t, r1, "runner-1 to drive", func(p release.Progress) bool { return p.Runner == "runner-1" && p.State == release.Running })
	r2 := f.runner(t, "runner-2")
	_, err := r2.Run(context.Background(), pl)
	if !errors.Is(err, release.ErrHeld) || !strings.HasPrefix(err.Error(), "release: channel trade is driven by runner runner-1 since ") ||
		!strings.HasSuffix(err.Error(), "; wait for it, or abort it with `switchyard release abort trade`") {
		t.Fatalf("second runner: %v", err)
	}
	p, err := r2.Command(context.Background(), "trade", release.Abort)
	if err != nil || p.State != release.Aborted {
		t.Fatalf("abort: %s, %v", p.State, err)
	}
	res := testutil.Receive(t, "runner-1 to end", done1)
	if !errors.Is(res.err, release.ErrAborted) || !strings.Contains(res.err.Error(), "step 1 (10 %) aborted: aborted by runner-2; all traffic back to green") {
		t.Fatalf("runner-1: %v", res.err)
	}
	if rule := blue(t, f.ctl); rule.BluePercent != 0 || !strings.Contains(rule.Reason, "aborted by runner-2") {
		t.Errorf("rule after abort: %+v", rule)
	}
}

// Without traffic the step does not pass, however long past its hold; it says what it waits
// for. Once calls come, it passes.
func TestTooFewRequestsWaits(t *testing.T) {
	const hold = 200 * time.Millisecond
	f := setup(t, 0)
	r := f.runner(t, "runner-1")
	done, _ := start(t, r, plan(30, step(10, hold)))
	p := waitProgress(t, r, "figures well past the hold", func(p release.Progress) bool {
		return !p.FiguresAt.IsZero() && p.FiguresAt.Sub(p.StepStarted) > 3*hold
	})
	if p.State != release.Running || len(p.Verdicts) != 0 || !p.JudgeableAt.IsZero() || blue(t, f.ctl).BluePercent != 10 {
		t.Fatalf("without traffic: %s, verdicts %+v, judgeable at %v", p.State, p.Verdicts, p.JudgeableAt)
	}
	if p.Note != "step 1 (10 %): waiting for 30 requests on blue: order has 0" {
		t.Errorf("note %q", p.Note)
	}
	select {
	case res := <-done:
		t.Fatalf("the plan ended without traffic: %s, %v", res.p.State, res.err)
	default:
	}
	startLoad(t, f.cli, 0)
	res := testutil.Receive(t, "the plan to end", done)
	if res.err != nil || res.p.State != release.Succeeded || res.p.Verdicts[0].Figures[0].NewRequests < 30 {
		t.Fatalf("with traffic: %+v, %v", res.p, res.err)
	}
}

// A plan needs its channel open.
func TestRefusesAChannelNotOpen(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	r, err := release.New(release.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Run(context.Background(), plan(10, step(10, 0)))
	if err == nil || !strings.Contains(err.Error(), "channel trade has no rule: open the release with `switchyard channel open trade --apps a,b`") {
		t.Fatalf("Run on no channel: %v", err)
	}
	if _, err := r.Status(context.Background(), "trade"); !errors.Is(err, release.ErrNoPlan) {
		t.Fatalf("Status: %v", err)
	}
}
