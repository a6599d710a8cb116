package job_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/job"
)

// The tests spend their time waiting for etcd's leases to expire in real time, not on the
// CPU, so they all run at once unless -test.parallel says otherwise (its default, GOMAXPROCS,
// would queue them two by two on a 2-core machine).
func TestMain(m *testing.M) { testutil.MainParallel(m, 8) }

// The tests' job: 8 items and a trigger every 200 ms of a fake clock that the test moves.
// Session leases are etcd's, so they expire in real time: an executor that is to lose its
// lease has a short TTL, the others a long one, which no slow machine reaches by accident.
const (
	items = 8
	every = 200 * time.Millisecond
	short = time.Second
	long  = 10 * time.Second
	keys  = "/switchyard/jobs/settle/"
)

// The leader reassigns at a change of its drains because the change wakes it (its Drains'
// channel), not at its next periodic check, which this test turns off.
func TestLeaderWakesAtADrainChange(t *testing.T) {
	v := newEnv(t)
	v.noRecheck = true
	v.startAll(long, "blue-1", "green-1")
	v.assigned("blue-1", "green-1")
	v.drain(deploy.Drain{Blue: true})
	v.assigned("green-1")
	v.drain(deploy.Drain{})
	v.assigned("blue-1", "green-1")
	v.drain(deploy.Drain{Green: true})
	v.assigned("blue-1")
}

// call is one handler call.
type call struct {
	executor string
	item     int
}

type env struct {
	t      *testing.T
	e      *etcdtest.Server
	cli    *clientv3.Client                // through the proxy, as the executors reach etcd
	direct *clientv3.Client                // around the proxy, to look while it is cut
	drains map[string]*deploy.ManualDrains // executor id → its instance's drains
	d      deploy.Drain                    // what drain sets them to
	// noRecheck: the leader checks the assignment only when woken (Executor.NoRecheck).
	noRecheck bool
	clk       *clockwork.FakeClock
	execs     map[string]*job.Executor
	live      int  // executors whose schedule runs: the clock's waiters between triggers
	lostOK    bool // accounted allows claims that never ran (etcd was stopped)

	// hold, if set, is called by the handler after it counted the call: a test holds runs in
	// progress with it. Set it before starting executors.
	hold func(ctx context.Context, id string, item int)
	// tweak, if set, changes each executor's Config before NewExecutor.
	tweak func(*job.Config)

	mu    sync.Mutex // guards calls
	calls map[call]int
}

func newEnv(t *testing.T) *env {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	return &env{t: t, e: e, cli: cli, direct: e.DirectClient(t), drains: map[string]*deploy.ManualDrains{},
		clk:   clockwork.NewFakeClockAt(time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)),
		execs: map[string]*job.Executor{}, calls: map[call]int{}}
}

func colorOf(id string) deploy.Color { return deploy.Color(id[:strings.Index(id, "-")]) }

// drain sets the drains of every executor, started or to come, to d: what lifecycle's
// Instance does at a change of the app's rule.
func (v *env) drain(d deploy.Drain) {
	v.d = d
	for _, m := range v.drains {
		m.Set(d)
	}
}

// start starts executor id (its color is the id's prefix: "blue-1") with session TTL ttl and
// Start's ctx ctx.
func (v *env) start(ctx context.Context, id string, ttl time.Duration) *job.Executor {
	v.t.Helper()
	drains := deploy.NewManualDrains(colorOf(id))
	drains.Set(v.d)
	v.drains[id] = drains
	cfg := job.Config{
		Client: v.cli, ID: id, TTL: ttl, Logger: testutil.Logger(v.t), Clock: v.clk, Drains: drains,
		Job: job.Job{Name: "settle", Every: every, Items: items,
			Handler: func(ctx context.Context, item int) error {
				v.mu.Lock()
				v.calls[call{id, item}]++
				v.mu.Unlock()
				if v.hold != nil {
					v.hold(ctx, id, item)
				}
				return nil
			}},
	}
	if v.tweak != nil {
		v.tweak(&cfg)
	}
	ex, err := job.NewExecutor(cfg)
	if err != nil {
		v.t.Fatal(err)
	}
	if v.noRecheck {
		ex.NoRecheck()
	}
	if err := ex.Start(ctx); err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(func() { _ = ex.Stop(context.Background()) })
	v.execs[id] = ex
	v.live++
	return ex
}

func (v *env) startAll(ttl time.Duration, ids ...string) {
	v.t.Helper()
	for _, id := range ids {
		v.start(context.Background(), id, ttl)
	}
}

// running starts executors ids with session TTL ttl and returns once the leader has assigned
// the items to them and every item has run at one trigger.
func (v *env) running(ttl time.Duration, ids ...string) {
	v.t.Helper()
	v.startAll(ttl, ids...)
	v.assigned(ids...)
	v.ran(v.trigger())
}

func (v *env) stop(id string) {
	v.t.Helper()
	if err := v.execs[id].Stop(context.Background()); err != nil {
		v.t.Fatalf("Stop %s: %v", id, err)
	}
	v.live--
}

func (v *env) kill(id string) {
	v.execs[id].Kill()
	v.live--
}

// trigger moves the clock to the next trigger once the schedule of every running executor
// waits for it (none is still claiming items of the last one), and returns the trigger.
func (v *env) trigger() time.Time {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	if err := v.clk.BlockUntilContext(ctx, v.live); err != nil {
		v.t.Fatalf("the schedules of %d executors did not all wait for the next trigger", v.live)
	}
	now := v.clk.Now()
	next := now.Truncate(every).Add(every)
	v.clk.Advance(next.Sub(now))
	return next
}

func (v *env) get(key string, opts ...clientv3.OpOption) *clientv3.GetResponse {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := v.direct.Get(ctx, key, opts...)
	if err != nil {
		v.t.Fatalf("get %s: %v", key, err)
	}
	return resp
}

// claims reads the run claims from etcd: trigger (ms) → item → the executor that claimed it.
func (v *env) claims() map[int64]map[int]string {
	v.t.Helper()
	out := map[int64]map[int]string{}
	for _, kv := range v.get(keys+"runs/", clientv3.WithPrefix()).Kvs {
		item, ms, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), keys+"runs/"), "/")
		it, err1 := strconv.Atoi(item)
		at, err2 := strconv.ParseInt(ms, 10, 64)
		if err1 != nil || err2 != nil {
			v.t.Fatalf("malformed claim key %s", kv.Key)
		}
		if out[at] == nil {
			out[at] = map[int]string{}
		}
		out[at][it] = string(kv.Value)
	}
	return out
}

// accounted waits until every claim in etcd has had its one handler call, by the executor
// that claimed it. It fails at once if an executor ran an item more often than it claimed it,
// or counted more runs than it has claims (an item run twice for one trigger): runs and calls
// are read before the claims, and a claim is committed before its run is counted. With
// v.lostOK, claims that never ran are allowed (a claim committed as etcd went away, whose
// reply was lost, so its executor skipped it: at most once, never twice); it returns how many.
func (v *env) accounted() (lost int) {
	v.t.Helper()
	testutil.Eventually(v.t, "every claim run once by its executor", func() bool {
		runs := map[string]int64{}
		for id, ex := range v.execs {
			runs[id] = ex.Runs()
		}
		v.mu.Lock()
		calls := maps.Clone(v.calls)
		v.mu.Unlock()
		claimed, byExec := map[call]int{}, map[string]int64{}
		for _, its := range v.claims() {
			for it, id := range its {
				claimed[call{id, it}]++
				byExec[id]++
			}
		}
		quiet := true
		for c, n := range calls {
			if n > claimed[c] {
				v.t.Fatalf("%s ran item %d %d times but claimed it %d times", c.executor, c.item, n, claimed[c])
			}
		}
		called := map[string]int64{}
		for c, n := range calls {
			called[c.executor] += int64(n)
		}
		for id, n := range runs {
			if n > byExec[id] {
				v.t.Fatalf("%s counted %d runs but has %d claims: an item ran twice for a trigger", id, n, byExec[id])
			}
			quiet = quiet && called[id] == n && (v.lostOK || n == byExec[id])
		}
		lost = 0
		for c, n := range claimed {
			lost += n - calls[c]
		}
		return quiet
	})
	return lost
}

// ran waits until every item has been claimed for trigger at and every claim has been run
// (accounted), and returns who ran each item.
func (v *env) ran(at time.Time) map[int]string {
	v.t.Helper()
	var owners map[int]string
	testutil.Eventually(v.t, fmt.Sprintf("every item claimed for trigger %s", at.Format("15:04:05.000")), func() bool {
		owners = v.claims()[at.UnixMilli()]
		return len(owners) == items
	})
	v.accounted()
	return owners
}

func (v *env) callsBy(color deploy.Color) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for c, k := range v.calls {
		if colorOf(c.executor) == color {
			n += k
		}
	}
	return n
}

// assigned waits until the leader's assignment gives every item to exactly the executors
// ids (leader elected, assignment written), and returns it: item → executor.
func (v *env) assigned(ids ...string) map[int]string {
	v.t.Helper()
	var owners map[int]string
	testutil.Eventually(v.t, fmt.Sprintf("an assignment of the items to %v", ids), func() bool {
		resp := v.get(keys + "assignment")
		if len(resp.Kvs) == 0 {
			return false
		}
		var a struct{ Items map[string][]int }
		if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
			return false // not the leader's (TestTheLeaderReplacesAForeignAssignment)
		}
		owners = map[int]string{}
		for id, its := range a.Items {
			for _, it := range its {
				owners[it] = id
			}
		}
		got := slices.Sorted(maps.Keys(a.Items))
		return len(owners) == items && slices.Equal(got, slices.Sorted(slices.Values(ids)))
	})
	return owners
}

// leader is the id of the executor whose election key is the oldest.
func (v *env) leader() string {
	v.t.Helper()
	resp := v.get(keys+"leader", clientv3.WithFirstCreate()...)
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// campaigning reports whether id has an election key (its candidacy, or its leadership).
func (v *env) campaigning(id string) bool {
	v.t.Helper()
	for _, kv := range v.get(keys+"leader", clientv3.WithPrefix()).Kvs {
		if string(kv.Value) == id {
			return true
		}
	}
	return false
}

// registered reads the executors' registrations: id → lease.
func (v *env) registered() map[string]clientv3.LeaseID {
	v.t.Helper()
	out := map[string]clientv3.LeaseID{}
	for _, kv := range v.get(keys+"executors/", clientv3.WithPrefix()).Kvs {
		out[strings.TrimPrefix(string(kv.Key), keys+"executors/")] = clientv3.LeaseID(kv.Lease)
	}
	return out
}

func TestEveryTriggerRunsEveryItemAndDrainsAreObeyed(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	ids := []string{"blue-1", "blue-2", "green-1", "green-2"}
	v.startAll(long, ids...)
	want := v.assigned(ids...)
	for range 3 { // the steady state: every item runs on the executor it is assigned to
		at := v.trigger()
		if got := v.ran(at); !maps.Equal(got, want) {
			t.Fatalf("trigger %v: items ran on %v; the assignment says %v", at, got, want)
		}
	}

	// Drain blue. Once the executors' drains show it, no blue executor starts an item, and no
	// item is lost, from the next trigger on, even before the leader has given blue's items
	// to green.
	blueRuns := v.callsBy(deploy.Blue)
	v.drain(deploy.Drain{Blue: true})
	for i := range 3 {
		if i == 2 {
			v.assigned("green-1", "green-2")
		}
		at := v.trigger()
		for it, id := range v.ran(at) {
			if colorOf(id) == deploy.Blue {
				t.Fatalf("trigger %d after the drain: item %d claimed by %s", i, it, id)
			}
		}
		if n := v.callsBy(deploy.Blue); n != blueRuns {
			t.Fatalf("blue executors ran %d items after the drain", n-blueRuns)
		}
	}

	// Undrain: no item is lost at the next trigger, and blue executors take their items again.
	v.drain(deploy.Drain{})
	v.ran(v.trigger())
	want = v.assigned(ids...)
	at := v.trigger()
	if got := v.ran(at); !maps.Equal(got, want) {
		t.Fatalf("after the undrain, items ran on %v; the assignment says %v", got, want)
	}
	if v.callsBy(deploy.Blue) == blueRuns {
		t.Fatal("blue executors got no runs back after the undrain")
	}
	v.accounted()
}

func TestLeaderLossAndAKilledExecutor(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	// Each executor starts once the one before it campaigns, so the line of succession is
	// ids: blue-1 leads, then blue-2. green-1 is to be killed: its lease has the short TTL.
	ids := []string{"blue-1", "blue-2", "green-1", "green-2"}
	for _, id := range ids {
		ttl := long
		if id == "green-1" {
			ttl = short
		}
		v.start(context.Background(), id, ttl)
		testutil.Eventually(t, id+" campaigning", func() bool { return v.campaigning(id) })
	}
	v.assigned(ids...)
	v.ran(v.trigger())

	// The leader stops: its session is revoked by the time Stop returns, so its registration
	// and election key are gone at once, and the next in line leads and reassigns.
	old := v.leader()
	if old != "blue-1" {
		t.Fatalf("%q leads; the first to campaign was blue-1", old)
	}
	v.stop(old)
	if _, ok := v.registered()[old]; ok {
		t.Fatalf("%s is still registered after Stop", old)
	}
	if v.campaigning(old) {
		t.Fatalf("%s still campaigns after Stop", old)
	}
	testutil.EventuallyWithin(t, 2*time.Second, "blue-2 leading", func() bool { return v.leader() == "blue-2" })
	survivors := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == old })
	v.assigned(survivors...)
	at := v.trigger()
	// Every item runs, none on the executor that left. (Not compared with the assignment:
	// green-1's short lease may lapse on a slow machine and move its items meanwhile.)
	for it, id := range v.ran(at) {
		if id == old {
			t.Fatalf("item %d ran on %s after it stopped", it, old)
		}
	}

	// Another executor dies without cleanup. At the trigger that passes while its lease lives
	// its items have no one; once the lease expires (TTL 1 s, etcd's time) the leader gives
	// them to the others, who run them for that trigger (RunOnce) and for every trigger after.
	victim := "green-1"
	v.kill(victim)
	orphaned := v.trigger()
	testutil.Eventually(t, victim+"'s registration expiring with its lease", func() bool {
		_, ok := v.registered()[victim]
		return !ok
	})
	rest := slices.DeleteFunc(slices.Clone(survivors), func(id string) bool { return id == victim })
	want := v.assigned(rest...)
	for it, id := range v.ran(orphaned) {
		if id == victim {
			t.Fatalf("the killed %s claimed item %d", victim, it)
		}
	}
	at = v.trigger()
	if got := v.ran(at); !maps.Equal(got, want) {
		t.Fatalf("after %s was killed, items ran on %v; the assignment says %v", victim, got, want)
	}
	v.accounted()
}

// A leader that takes over with a view one version behind may write just what its
// predecessor wrote: the same bytes, at a new revision. Executors must follow the revision,
// which their claims check, or every claim is refused from then on and the job stops.
func TestARewriteOfTheSameAssignmentKeepsTheJobRunning(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	v.running(long, "green-1", "green-2")
	a := v.get(keys + "assignment").Kvs[0]
	if _, err := v.direct.Put(context.Background(), string(a.Key), string(a.Value)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		v.ran(v.trigger())
	}
	v.accounted()
}

// waitClosed waits for ch to be closed.
func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testutil.Deadline):
		t.Fatalf("timed out after %v waiting for %s", testutil.Deadline, what)
	}
}

func TestScheduleResumesAfterEtcdRestart(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	v.running(short, "green-1", "green-2")
	before := v.registered()

	// etcd stops for longer than the TTL: a trigger passes while it is down (its claims wait
	// for etcd or give up; not checked) and the executors' sessions end.
	v.e.Stop()
	v.lostOK = true
	v.trigger()
	for id, ex := range v.execs {
		waitClosed(t, id+"'s session ending while etcd is down", ex.SessionDone())
	}
	if err := v.e.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "both executors registered again on new sessions", func() bool {
		now := v.registered()
		return len(now) == 2 && now["green-1"] != before["green-1"] && now["green-2"] != before["green-2"]
	})
	for range 3 { // the schedule resumed: every item runs at every trigger
		v.ran(v.trigger())
	}
	lost := v.accounted()
	t.Logf("across the restart: %d item runs claimed as etcd stopped whose reply was lost, so not run", lost)
}

func TestExecutorsRegisterAgainAfterTheirLeasesExpired(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	v.running(short, "green-1", "green-2")

	// A partition: etcd keeps running and expires the executors' leases (TTL 1 s).
	v.e.Cut()
	testutil.Eventually(t, "the cut-off executors' registrations expiring with their leases", func() bool {
		return len(v.registered()) == 0
	})
	v.e.Heal()
	healed := time.Now()
	testutil.EventuallyWithin(t, 10*time.Second, "both executors registered again after the partition healed", func() bool {
		return len(v.registered()) == 2
	})
	t.Logf("both executors registered again %v after the partition healed", time.Since(healed).Round(time.Millisecond))
	for range 3 { // and every item runs at every trigger
		v.ran(v.trigger())
	}
	v.accounted()
}

// lifecycle cancels the ctx it passes to Start once Start returns; the executor must keep its
// session and its schedule, and stop cleanly.
func TestStartContextEndingDoesNotStopTheExecutor(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	const ttl = 3 * time.Second // 2 s lost a keep-alive once on a machine loaded far past its cores
	v.start(ctx, "green-1", ttl)
	lease := v.registered()["green-1"]
	cancel()

	// A session tied to ctx would stop its keep-alives now and etcd would expire its lease
	// within the TTL. A lease granted now with the same TTL and never kept alive tells when
	// that has happened: etcd expires it. Time passing is the point here, and it is etcd's.
	ref, err := v.direct.Grant(context.Background(), int64(ttl/time.Second))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "etcd expiring a lease granted as Start's ctx ended", func() bool {
		resp, err := v.direct.TimeToLive(context.Background(), ref.ID)
		return err == nil && resp.TTL == -1
	})
	if got := v.registered()["green-1"]; got != lease {
		t.Fatalf("the executor's registration is on lease %x, not on its session's %x: the session ended with Start's ctx", got, lease)
	}
	v.assigned("green-1")
	if got := v.ran(v.trigger()); len(got) != items {
		t.Fatalf("the executor ran %d of %d items after Start's ctx ended", len(got), items)
	}
	if got := v.registered()["green-1"]; got != lease {
		t.Fatalf("the executor's registration moved to lease %x from its session's %x", got, lease)
	}
	v.stop("green-1")
}

// Anyone who can write under the prefix can overwrite or delete the assignment. Executors
// refuse what no leader writes, and the leader writes its own again at once, so the job keeps
// running: every item at every trigger.
func TestTheLeaderReplacesAForeignAssignment(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	v.running(long, "green-1", "green-2")
	for _, foreign := range []string{
		`not json`,
		`{"v":1,"version":1000,"items":{"green-1":[0,1,2,3,4,5,6,7,8,9,10],"green-2":[-1]}}`,
		"", // deleted
	} {
		if foreign == "" {
			_, err := v.direct.Delete(context.Background(), keys+"assignment")
			if err != nil {
				t.Fatal(err)
			}
		} else if _, err := v.direct.Put(context.Background(), keys+"assignment", foreign); err != nil {
			t.Fatal(err)
		}
		v.assigned("green-1", "green-2")
		for range 2 {
			v.ran(v.trigger())
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for c := range v.calls {
		if c.item < 0 || c.item >= items {
			t.Fatalf("%s ran item %d of a job of %d items", c.executor, c.item, items)
		}
	}
}
