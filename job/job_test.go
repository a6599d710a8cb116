package job_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/job"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var silent = slog.New(slog.NewTextHandler(io.Discard, nil))

const items = 8

// run is one handler call.
type run struct {
	executor string
	color    registry.Color
	item     int
	at       time.Time
}

type env struct {
	t     *testing.T
	e     *etcdtest.Server
	cli   *clientv3.Client
	rules *traffic.Client
	ctl   *traffic.Controller
	mu    sync.Mutex
	runs  []run
	execs map[string]*job.Executor
}

func newEnv(t *testing.T) *env {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rules, err := traffic.NewClient(context.Background(), traffic.Config{Client: cli, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rules.Close)
	ctl, _ := traffic.NewController(traffic.Config{Client: cli})
	if _, err := ctl.Open(context.Background(), "trade", []string{"reports"}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, e: e, cli: cli, rules: rules, ctl: ctl, execs: map[string]*job.Executor{}}
}

func (v *env) start(id string, color registry.Color) *job.Executor {
	v.t.Helper()
	ex, err := job.NewExecutor(job.Config{
		Client: v.cli, ID: id, TTL: time.Second, Logger: silent,
		Job: job.Job{Name: "settle", Every: 200 * time.Millisecond, Items: items,
			Handler: func(_ context.Context, item int) error {
				v.mu.Lock()
				v.runs = append(v.runs, run{id, color, item, time.Now()})
				v.mu.Unlock()
				return nil
			}},
	})
	if err != nil {
		v.t.Fatal(err)
	}
	ex.UseRules(v.rules, "reports", color) // what lifecycle does
	v.t.Cleanup(v.rules.Subscribe("trade", ex.HandleEvent))
	if err := ex.Start(context.Background()); err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(func() { _ = ex.Stop(context.Background()) })
	v.execs[id] = ex
	return ex
}

// claims returns, per trigger (ms) in [from, to], the items claimed, from etcd.
func (v *env) claims(from, to time.Time) map[int64][]int {
	v.t.Helper()
	resp, err := v.e.DirectClient(v.t).Get(context.Background(), "/switchyard/jobs/settle/runs/", clientv3.WithPrefix())
	if err != nil {
		v.t.Fatal(err)
	}
	out := map[int64][]int{}
	for _, kv := range resp.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), "/switchyard/jobs/settle/runs/"), "/")
		item, _ := strconv.Atoi(parts[0])
		ms, _ := strconv.ParseInt(parts[1], 10, 64)
		if ms >= from.UnixMilli() && ms <= to.UnixMilli() {
			out[ms] = append(out[ms], item)
		}
	}
	return out
}

// missed counts, over the triggers of [from, to], item runs that did not happen.
func (v *env) missed(from, to time.Time) (triggers, missed int) {
	c := v.claims(from, to)
	for t := from.Truncate(200 * time.Millisecond).Add(200 * time.Millisecond); !t.After(to); t = t.Add(200 * time.Millisecond) {
		triggers++
		missed += items - len(c[t.UnixMilli()])
	}
	return triggers, missed
}

// doubled counts handler calls beyond one per claim (there must be none). A negative result
// is claims that never ran: a claim committed while etcd went away, its reply lost, so the
// executor did not run it (at most once, never twice).
func (v *env) doubled() int {
	var total int64
	for _, ex := range v.execs {
		total += ex.Runs()
	}
	all := v.claims(time.Time{}, time.Now().Add(time.Hour))
	n := 0
	for _, its := range all {
		n += len(its)
	}
	return int(total) - n
}

func (v *env) runsBy(color registry.Color, from, to time.Time) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, r := range v.runs {
		if r.color == color && r.at.After(from) && r.at.Before(to) {
			n++
		}
	}
	return n
}

func TestEveryTriggerRunsEveryItemAndDrainsAreObeyed(t *testing.T) {
	v := newEnv(t)
	for _, id := range []string{"blue-1", "blue-2", "green-1", "green-2"} {
		v.start(id, registry.Color(id[:strings.Index(id, "-")]))
	}
	time.Sleep(1500 * time.Millisecond) // leader elected, assignment written
	steadyFrom := time.Now()
	time.Sleep(1500 * time.Millisecond)
	trig, miss := v.missed(steadyFrom, time.Now())
	t.Logf("steady: %d triggers, %d item runs missed", trig, miss)
	if miss != 0 {
		t.Fatalf("steady state missed %d item runs over %d triggers", miss, trig)
	}

	// Drain blue: from the next trigger on, no blue executor starts an item, none is lost.
	if _, err := v.ctl.Shift(context.Background(), "trade", 0); err != nil {
		t.Fatal(err)
	}
	drained := time.Now()
	// The executors read drains from this rule client: from when it shows the drain, allow
	// one trigger for a run claimed just before to start.
	for r, _ := v.rules.ChannelOf("reports"); r.BluePercent != 0; r, _ = v.rules.ChannelOf("reports") {
		if time.Since(drained) > 5*time.Second {
			t.Fatal("the rule client never saw the drain")
		}
		time.Sleep(5 * time.Millisecond)
	}
	settled := time.Now().Add(250 * time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	if n := v.runsBy(registry.ColorBlue, settled, time.Now()); n != 0 {
		t.Fatalf("blue executors started %d runs after the drain", n)
	}
	trig, miss = v.missed(drained, time.Now().Add(-100*time.Millisecond))
	t.Logf("across the drain: %d triggers, %d item runs missed", trig, miss)
	if miss != 0 {
		t.Fatalf("the drain lost %d item runs", miss)
	}

	// Undrain: blue executors take items again.
	if _, err := v.ctl.Shift(context.Background(), "trade", 50); err != nil {
		t.Fatal(err)
	}
	undrained := time.Now()
	time.Sleep(1500 * time.Millisecond)
	if n := v.runsBy(registry.ColorBlue, undrained.Add(500*time.Millisecond), time.Now()); n == 0 {
		t.Fatal("blue executors got no runs back after the undrain")
	}
	trig, miss = v.missed(undrained, time.Now().Add(-100*time.Millisecond))
	t.Logf("across the undrain: %d triggers, %d item runs missed", trig, miss)
	if miss != 0 {
		t.Fatalf("the undrain lost %d item runs", miss)
	}
	if d := v.doubled(); d != 0 {
		t.Fatalf("%d handler calls had no claim of their own (an item ran twice for a trigger)", d)
	}
}

func (v *env) leader() string {
	v.t.Helper()
	resp, err := v.cli.Get(context.Background(), "/switchyard/jobs/settle/leader", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

func TestLeaderLossAndAKilledExecutor(t *testing.T) {
	v := newEnv(t)
	for _, id := range []string{"blue-1", "blue-2", "green-1", "green-2"} {
		v.start(id, registry.Color(id[:strings.Index(id, "-")]))
	}
	time.Sleep(1500 * time.Millisecond)
	old := v.leader()
	if old == "" {
		t.Fatal("no leader")
	}
	// The leader leaves (its session closes): another takes over within the TTL.
	gone := time.Now()
	if err := v.execs[old].Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for v.leader() == "" || v.leader() == old {
		if time.Since(gone) > 2*time.Second {
			t.Fatalf("no new leader %v after the old one left", time.Since(gone))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("new leader %s after %v", v.leader(), time.Since(gone).Round(time.Millisecond))
	time.Sleep(time.Second)

	// Another executor dies without cleanup: its items move once its lease expires (TTL 1 s).
	var victim string
	for id := range v.execs {
		if id != v.leader() && id != old {
			victim = id
			break
		}
	}
	killed := time.Now()
	v.execs[victim].Kill()
	time.Sleep(3 * time.Second)
	trig, miss := v.missed(killed.Add(2500*time.Millisecond), time.Now().Add(-100*time.Millisecond))
	t.Logf("after %s was killed: %d triggers, %d item runs missed once its lease expired", victim, trig, miss)
	if miss != 0 {
		t.Fatalf("%d item runs missed after the dead executor's items moved", miss)
	}
	trig, miss = v.missed(gone, time.Now().Add(-100*time.Millisecond))
	t.Logf("across leader loss and a kill: %d triggers, %d item runs missed (the kill's lease TTL included)", trig, miss)
	if d := v.doubled(); d > 0 {
		t.Fatalf("%d item runs doubled", d)
	}
}

func TestScheduleResumesAfterEtcdRestart(t *testing.T) {
	v := newEnv(t)
	v.start("green-1", registry.ColorGreen)
	v.start("green-2", registry.ColorGreen)
	time.Sleep(1500 * time.Millisecond)
	v.e.Stop()
	time.Sleep(2500 * time.Millisecond) // > TTL (1 s): the sessions end and must be renewed
	if err := v.e.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	time.Sleep(5 * time.Second)
	trig, miss := v.missed(back.Add(3*time.Second), time.Now().Add(-100*time.Millisecond))
	t.Logf("after etcd came back: %d triggers, %d item runs missed", trig, miss)
	if miss != 0 {
		t.Fatalf("the schedule did not resume: %d item runs missed", miss)
	}
	d := v.doubled()
	if d > 0 {
		t.Fatalf("%d item runs doubled", d)
	}
	t.Logf("across the restart: %d item runs claimed as etcd stopped whose reply was lost, so not run", -d)
}

func TestExecutorsRegisterAgainAfterTheirLeasesExpired(t *testing.T) {
	v := newEnv(t)
	v.start("green-1", registry.ColorGreen)
	v.start("green-2", registry.ColorGreen)
	time.Sleep(1500 * time.Millisecond)
	// A partition: etcd keeps running and expires the executors' leases (TTL 1 s).
	v.e.Cut()
	time.Sleep(2500 * time.Millisecond)
	direct := v.e.DirectClient(t)
	if resp, _ := direct.Get(context.Background(), "/switchyard/jobs/settle/executors/", clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Fatalf("%d executor registrations survived their lease", len(resp.Kvs))
	}
	v.e.Heal()
	healed := time.Now()
	deadline := healed.Add(10 * time.Second)
	for {
		resp, _ := direct.Get(context.Background(), "/switchyard/jobs/settle/executors/", clientv3.WithPrefix())
		if len(resp.Kvs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("executors not registered again 10 s after the partition healed (%d of 2)", len(resp.Kvs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("both executors registered again %v after the partition healed", time.Since(healed).Round(time.Millisecond))
	settled := time.Now().Add(time.Second)
	time.Sleep(2500 * time.Millisecond)
	trig, miss := v.missed(settled, time.Now().Add(-100*time.Millisecond))
	t.Logf("afterwards: %d triggers, %d item runs missed", trig, miss)
	if miss != 0 {
		t.Fatalf("%d item runs missed after the executors registered again", miss)
	}
}

// lifecycle cancels the ctx it passes to Start once Start returns; the executor must keep
// running and stop cleanly.
func TestStartContextEndingDoesNotStopTheExecutor(t *testing.T) {
	v := newEnv(t)
	ex, err := job.NewExecutor(job.Config{Client: v.cli, ID: "green-1", TTL: time.Second, Logger: silent,
		Job: job.Job{Name: "settle", Every: 100 * time.Millisecond, Items: 2, Handler: func(context.Context, int) error { return nil }}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := ex.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(2500 * time.Millisecond) // > TTL: a session tied to ctx would be gone
	before := ex.Runs()
	time.Sleep(500 * time.Millisecond)
	if ex.Runs() == before {
		t.Fatal("the executor stopped running when Start's ctx ended")
	}
	if err := ex.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}
