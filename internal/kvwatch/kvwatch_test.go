package kvwatch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const prefix = "/p/"

// item is what the tests decode a value into: its key without the prefix, and the value.
type item struct{ name, val string }

// decode refuses values that start with "bad".
func decode(name string, value []byte) (item, error) {
	if strings.HasPrefix(string(value), "bad") {
		return item{}, fmt.Errorf("value %q of %s is bad", value, name)
	}
	return item{name, string(value)}, nil
}

// change is one OnChange call, its set shown as "a=1 b=2".
type change struct {
	set string
	rev int64
}

func show(items []item) string {
	s := make([]string, len(items))
	for i, it := range items {
		s[i] = it.name + "=" + it.val
	}
	return strings.Join(s, " ")
}

// recorder records what a Watcher reports.
type recorder struct {
	mu       sync.Mutex
	changes  []change
	skips    []string // keys
	listErrs []error
}

func (r *recorder) onChange(items []item, rev int64) {
	r.mu.Lock()
	r.changes = append(r.changes, change{show(items), rev})
	r.mu.Unlock()
}

func (r *recorder) onSkip(key string, err error) {
	r.mu.Lock()
	r.skips = append(r.skips, key)
	r.mu.Unlock()
}

func (r *recorder) onListError(err error) {
	r.mu.Lock()
	r.listErrs = append(r.listErrs, err)
	r.mu.Unlock()
}

func (r *recorder) all() []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes)
}

func (r *recorder) skipped() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.skips)
}

func (r *recorder) listErrors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.listErrs)
}

// last is the latest change; ok is false before the first.
func (r *recorder) last() (change, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.changes) == 0 {
		return change{}, false
	}
	return r.changes[len(r.changes)-1], true
}

// waitFor waits until the latest set is want ("a=1 b=2"; "" is the empty set) and returns
// that change.
func (r *recorder) waitFor(t testing.TB, want string) change {
	t.Helper()
	var c change
	testutil.Eventually(t, fmt.Sprintf("the set %q", want), func() bool {
		var ok bool
		c, ok = r.last()
		return ok && c.set == want
	})
	return c
}

// start follows prefix with cli and closes the Watcher at cleanup.
func start(t testing.TB, cli *clientv3.Client, mod ...func(*kvwatch.Config[item])) (*recorder, *kvwatch.Watcher[item]) {
	t.Helper()
	r := &recorder{}
	cfg := kvwatch.Config[item]{
		Client:         cli,
		Prefix:         prefix,
		Decode:         decode,
		Equal:          func(a, b item) bool { return a == b },
		OnChange:       r.onChange,
		OnListError:    r.onListError,
		OnSkip:         r.onSkip,
		RequestTimeout: time.Second,
		Logger:         testutil.Logger(t),
	}
	for _, m := range mod {
		m(&cfg)
	}
	w := kvwatch.New(cfg)
	t.Cleanup(w.Close)
	return r, w
}

func perEvent(c *kvwatch.Config[item]) { c.PerEvent = true }

func put(t testing.TB, cli *clientv3.Client, key, val string) int64 {
	t.Helper()
	resp, err := cli.Put(context.Background(), key, val)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func del(t testing.TB, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Delete(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func txn(t testing.TB, cli *clientv3.Client, ops ...clientv3.Op) int64 {
	t.Helper()
	resp, err := cli.Txn(context.Background()).Then(ops...).Commit()
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// A write that lands after the list and before the watch starts is not lost: the watch
// starts at the list's revision + 1. Decode, which runs between the two, makes that write.
func TestTheWatchStartsRightAfterTheList(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	listRev := put(t, cli, prefix+"a", "1")

	var once sync.Once
	var bRev atomic.Int64
	var putErr atomic.Value
	r, _ := start(t, cli, func(c *kvwatch.Config[item]) {
		c.Decode = func(name string, value []byte) (item, error) {
			once.Do(func() { // the first Decode is the list's, of a
				resp, err := cli.Put(context.Background(), prefix+"b", "2")
				if err != nil {
					putErr.Store(err)
					return
				}
				bRev.Store(resp.Header.Revision)
			})
			return decode(name, value)
		}
	})
	r.waitFor(t, "a=1 b=2")
	if err := putErr.Load(); err != nil {
		t.Fatal(err)
	}
	want := []change{{"a=1", listRev}, {"a=1 b=2", bRev.Load()}}
	if got := r.all(); !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	if bRev.Load() != listRev+1 {
		t.Fatalf("b was written at revision %d, want %d: right after the list", bRev.Load(), listRev+1)
	}
}

// The first list reports the set even when it is empty, with the list's revision.
func TestTheFirstListIsReportedEvenWhenEmpty(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rev := put(t, cli, "/elsewhere", "x")
	r, _ := start(t, cli)
	if c := r.waitFor(t, ""); c.rev != rev {
		t.Fatalf("first change at revision %d, want the list's %d", c.rev, rev)
	}
}

// PerEvent reports every step of a watch response in order, each with its event's revision;
// without it one change per response. A put that changes nothing is not reported.
func TestPerEventReportsEveryStepInOrder(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	each, _ := start(t, cli, perEvent)
	batched, _ := start(t, cli)
	// Once both have listed and then seen this put through their watch, the watches are
	// live, so that etcd sends them one response per revision from now on (a watch catching
	// up gets many revisions in one response).
	each.waitFor(t, "")
	batched.waitFor(t, "")
	base := put(t, cli, prefix+"0", "0")
	each.waitFor(t, "0=0")
	batched.waitFor(t, "0=0")
	firstEach, firstBatched := each.all(), batched.all()

	// One transaction is one revision and one watch response.
	r1 := txn(t, cli, clientv3.OpPut(prefix+"a", "1"), clientv3.OpPut(prefix+"b", "2"), clientv3.OpPut(prefix+"c", "3"))
	r2 := txn(t, cli, clientv3.OpPut(prefix+"a", "1"), clientv3.OpDelete(prefix+"b"), clientv3.OpPut(prefix+"c", "4"))
	put(t, cli, prefix+"a", "1") // unchanged: no change reported
	r4 := put(t, cli, prefix+"d", "5")
	each.waitFor(t, "0=0 a=1 c=4 d=5")
	batched.waitFor(t, "0=0 a=1 c=4 d=5")

	wantEach := slices.Concat(firstEach, []change{
		{"0=0 a=1", r1}, {"0=0 a=1 b=2", r1}, {"0=0 a=1 b=2 c=3", r1},
		{"0=0 a=1 c=3", r2}, {"0=0 a=1 c=4", r2},
		{"0=0 a=1 c=4 d=5", r4},
	})
	if got := each.all(); !slices.Equal(got, wantEach) {
		t.Fatalf("PerEvent changes\n got %v\nwant %v", got, wantEach)
	}
	for _, first := range [][]change{firstEach, firstBatched} {
		if len(first) != 2 || first[0].set != "" || first[1] != (change{"0=0", base}) {
			t.Fatalf("changes before the transactions: %v; want the empty list, then 0=0 at %d", first, base)
		}
	}
	wantBatched := slices.Concat(firstBatched, []change{{"0=0 a=1 b=2 c=3", r1}, {"0=0 a=1 c=4", r2}, {"0=0 a=1 c=4 d=5", r4}})
	if got := batched.all(); !slices.Equal(got, wantBatched) {
		t.Fatalf("batched changes\n got %v\nwant %v", got, wantBatched)
	}
}

// A value that does not decode is skipped and reported to OnSkip; the key keeps its last good
// value, in the watch and in a list. A key that never had a good value is left out.
func TestABadValueIsSkippedAndTheLastGoodKept(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	put(t, cli, prefix+"a", "1")
	put(t, cli, prefix+"b", "2")
	r, _ := start(t, cli)
	r.waitFor(t, "a=1 b=2")

	put(t, cli, prefix+"a", "bad 1")
	put(t, cli, prefix+"c", "bad from the start")
	put(t, cli, prefix+"d", "4")
	r.waitFor(t, "a=1 b=2 d=4")
	if got := r.all(); len(got) != 2 {
		t.Fatalf("changes %v; the bad values must not be reported as changes", got)
	}
	if got, want := r.skipped(), []string{prefix + "a", prefix + "c"}; !slices.Equal(got, want) {
		t.Fatalf("OnSkip got %v, want %v", got, want)
	}

	// A new Watcher lists the same keys: a has no last good value there.
	fresh, _ := start(t, cli)
	fresh.waitFor(t, "b=2 d=4")
	if got, want := fresh.skipped(), []string{prefix + "a", prefix + "c"}; !slices.Equal(got, want) {
		t.Fatalf("OnSkip of the fresh Watcher got %v, want %v", got, want)
	}

	// Repairing a brings it back in both.
	put(t, cli, prefix+"a", "5")
	r.waitFor(t, "a=5 b=2 d=4")
	fresh.waitFor(t, "a=5 b=2 d=4")
}

// When etcd compacted the history the watch was to resume from, the Watcher lists again and
// reports the net change at once, keeping the last good value of a key that went bad in the
// meantime (the list's own last-good path).
func TestCompactedHistoryIsListedAgain(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	viaProxy, direct := e.Client(t), e.DirectClient(t)
	put(t, direct, prefix+"a", "1")
	put(t, direct, prefix+"b", "2")
	r, _ := start(t, viaProxy, perEvent)
	r.waitFor(t, "a=1 b=2")

	e.Cut()
	testutil.Eventually(t, "the Watcher's etcd connection to break", func() bool {
		return viaProxy.ActiveConnection().GetState() != connectivity.Ready
	})
	put(t, direct, prefix+"a", "bad")
	del(t, direct, prefix+"b")
	put(t, direct, prefix+"c", "3")
	put(t, direct, prefix+"c", "4")
	compacted, err := e.Compact(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := r.last(); c.set != "a=1 b=2" {
		t.Fatalf("while cut off the set became %q", c.set)
	}
	e.Heal()

	c := r.waitFor(t, "a=1 c=4")
	if c.rev < compacted {
		t.Fatalf("the set after the gap is of revision %d, before the compaction at %d", c.rev, compacted)
	}
	// The steps in between (b gone, c=3) are history etcd no longer has: one change.
	if got := r.all(); len(got) != 2 {
		t.Fatalf("changes %v; want the first list, then the net change of the re-list", got)
	}
	if got := r.skipped(); !slices.Equal(got, []string{prefix + "a"}) {
		t.Fatalf("OnSkip got %v, want a's bad value once", got)
	}
	if errs := r.listErrors(); len(errs) != 0 {
		t.Fatalf("OnListError called after the first list: %v", errs)
	}
}

// Across a gap in the watch (a partition, an etcd restart) the Watcher keeps its set, never
// reports an empty one or a list error, and converges to etcd's state.
func TestAWatchGapConvergesToEtcdsState(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	viaProxy, direct := e.Client(t), e.DirectClient(t)
	put(t, direct, prefix+"a", "1")
	put(t, direct, prefix+"b", "2")
	r, _ := start(t, viaProxy, perEvent, func(c *kvwatch.Config[item]) { c.RequestTimeout = 200 * time.Millisecond })
	r.waitFor(t, "a=1 b=2")

	// A partition, with writes on the other side.
	e.Cut()
	testutil.Eventually(t, "the Watcher's etcd connection to break", func() bool {
		return viaProxy.ActiveConnection().GetState() != connectivity.Ready
	})
	del(t, direct, prefix+"a")
	put(t, direct, prefix+"c", "3")
	e.Heal()
	r.waitFor(t, "b=2 c=3")

	// A restart of etcd, with writes after it.
	e.Stop()
	testutil.Eventually(t, "the Watcher's etcd connection to break", func() bool {
		return viaProxy.ActiveConnection().GetState() != connectivity.Ready
	})
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	put(t, direct, prefix+"d", "4")
	r.waitFor(t, "b=2 c=3 d=4")

	for _, c := range r.all() {
		if c.set == "" {
			t.Fatalf("changes %v: the set was emptied during a gap", r.all())
		}
	}
	if errs := r.listErrors(); len(errs) != 0 {
		t.Fatalf("OnListError called after the first list: %v", errs)
	}
}

// hook is a slog handler that hands every record's message to f, so a test can act at a
// point of the Watcher's loop that it logs.
type hook func(msg string)

func (h hook) Enabled(context.Context, slog.Level) bool      { return true }
func (h hook) Handle(_ context.Context, r slog.Record) error { h(r.Message); return nil }
func (h hook) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h hook) WithGroup(string) slog.Handler                 { return h }

// A list that fails after the Watcher has a set (etcd unreachable as the watch ended) is
// retried; the set is kept meanwhile, and OnListError, which is for a Watcher that never
// listed, is not called.
func TestAFailedListAfterTheFirstKeepsTheSet(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	viaProxy, direct := e.Client(t), e.DirectClient(t)
	put(t, direct, prefix+"a", "1")
	var armed atomic.Bool
	listFailed := make(chan struct{}, 1)
	r, _ := start(t, viaProxy, func(c *kvwatch.Config[item]) {
		c.RequestTimeout = 100 * time.Millisecond
		c.Logger = slog.New(hook(func(msg string) {
			switch {
			case !armed.Load():
			case strings.HasPrefix(msg, "watch ended"):
				e.Cut() // the list that follows fails
			case strings.HasPrefix(msg, "listing failed"):
				armed.Store(false)
				e.Heal()
				listFailed <- struct{}{}
			}
		}))
	})
	r.waitFor(t, "a=1")

	// The watch cannot resume past a compaction: it ends once the partition heals. (etcd
	// keeps the compaction's own revision, hence two writes.)
	e.Cut()
	put(t, direct, prefix+"b", "1")
	put(t, direct, prefix+"b", "2")
	if _, err := e.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	e.Heal()
	testutil.Receive(t, "a failed list", listFailed)
	if c, _ := r.last(); c.set != "a=1" {
		t.Fatalf("after a failed list the set is %q; want the last good a=1", c.set)
	}
	r.waitFor(t, "a=1 b=2")
	if errs := r.listErrors(); len(errs) != 0 {
		t.Fatalf("OnListError called after the first list: %v", errs)
	}
}

// While the Watcher has never listed, every failed list goes to OnListError as
// ErrUnavailable; once etcd answers, the set comes.
func TestListErrorsUntilTheFirstList(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	r, w := start(t, cli, func(c *kvwatch.Config[item]) { c.RequestTimeout = 100 * time.Millisecond })
	testutil.Eventually(t, "a list error", func() bool { return len(r.listErrors()) > 0 })
	if err := r.listErrors()[0]; !errors.Is(err, kvwatch.ErrUnavailable) {
		t.Fatalf("list error %v, want ErrUnavailable", err)
	}
	if got := r.all(); len(got) != 0 {
		t.Fatalf("changes %v before any list succeeded", got)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	w.Refresh() // retry now rather than after the backoff
	r.waitFor(t, "")
}

// Close stops the Watcher's goroutine, whether it is watching, or listing and retrying
// against an etcd that is down; no callback runs after Close returns.
func TestCloseStopsTheGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	e, err := etcdtest.New()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := e.NewClient(e.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	var closed atomic.Bool
	var late atomic.Int32
	guard := func(c *kvwatch.Config[item]) {
		onChange, onListError := c.OnChange, c.OnListError
		c.OnChange = func(items []item, rev int64) {
			if closed.Load() {
				late.Add(1)
			}
			onChange(items, rev)
		}
		c.OnListError = func(err error) {
			if closed.Load() {
				late.Add(1)
			}
			onListError(err)
		}
		c.RequestTimeout = 100 * time.Millisecond
	}
	watching, w1 := start(t, cli, guard)
	watching.waitFor(t, "")
	e.Stop()
	retrying, w2 := start(t, cli, guard)
	testutil.Eventually(t, "a list error", func() bool { return len(retrying.listErrors()) > 0 })

	w1.Close()
	w2.Close()
	closed.Store(true)
	w1.Close() // a second Close is harmless
	if n := late.Load(); n != 0 {
		t.Fatalf("%d callbacks ran after Close returned", n)
	}
	_ = cli.Close()
	e.Close()
	goleak.VerifyNone(t, before)
}

// Close waits for a callback that is running: once Close returns, none is.
func TestCloseWaitsForARunningCallback(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	inCallback := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	_, w := start(t, cli, func(c *kvwatch.Config[item]) {
		c.OnChange = func([]item, int64) {
			inCallback <- struct{}{}
			<-release
		}
	})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before start's Close
	testutil.Receive(t, "the first OnChange", inCallback)
	closed := make(chan struct{}, 1)
	go func() { w.Close(); closed <- struct{}{} }()
	// Close is called and does not return while OnChange runs. No other test runs beside
	// this one (it is not parallel), so a Close on the stack is this one.
	early := false
	testutil.Eventually(t, "Close to be called", func() bool {
		select {
		case <-closed:
			early = true
			return true
		default:
		}
		buf := make([]byte, 1<<20)
		return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("kvwatch.(*Watcher[...]).Close("))
	})
	select {
	case <-closed:
		early = true
	default:
	}
	if early {
		t.Fatal("Close returned while OnChange was still running")
	}
	releaseOnce.Do(func() { close(release) })
	testutil.Receive(t, "Close to return once OnChange did", closed)
}

func TestErr(t *testing.T) {
	t.Parallel()
	live := context.Background()
	cancelled, cancel := context.WithCancel(live)
	cancel()
	other := errors.New("etcdserver: mvcc: required revision has been compacted")
	for _, c := range []struct {
		name        string
		ctx         context.Context
		err         error
		unavailable bool
		is          error
	}{
		{"nil", live, nil, false, nil},
		{"caller cancelled", cancelled, status.Error(codes.Unavailable, "x"), false, context.Canceled},
		{"request timeout", live, context.DeadlineExceeded, true, context.DeadlineExceeded},
		{"unavailable", live, status.Error(codes.Unavailable, "connection refused"), true, nil},
		{"other", live, other, false, other},
	} {
		got := kvwatch.Err(c.ctx, c.err)
		if (c.err == nil) != (got == nil) {
			t.Errorf("%s: Err = %v", c.name, got)
			continue
		}
		if errors.Is(got, kvwatch.ErrUnavailable) != c.unavailable {
			t.Errorf("%s: Err = %v; ErrUnavailable: %v, want %v", c.name, got, !c.unavailable, c.unavailable)
		}
		if c.is != nil && !errors.Is(got, c.is) {
			t.Errorf("%s: Err = %v, want it to wrap %v", c.name, got, c.is)
		}
		if c.unavailable && !strings.Contains(got.Error(), "check that etcd is running") {
			t.Errorf("%s: Err = %q; want it to say what to check", c.name, got)
		}
	}
}

// Stamp gives each item its key's create revision and lease, on the list and on the watch;
// a key deleted and created again gets a new create revision.
func TestStampGivesTheCreateRevisionAndLease(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	stamp := func(it item, createRev, lease int64) item {
		it.val += fmt.Sprintf("@%d/%x", createRev, lease)
		return it
	}
	a := put(t, cli, prefix+"a", "1")
	r, _ := start(t, cli, func(c *kvwatch.Config[item]) { c.Stamp = stamp })
	r.waitFor(t, fmt.Sprintf("a=1@%d/0", a))
	g, err := cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(context.Background(), prefix+"b", "2", clientv3.WithLease(g.ID))
	if err != nil {
		t.Fatal(err)
	}
	b := resp.Header.Revision
	r.waitFor(t, fmt.Sprintf("a=1@%d/0 b=2@%d/%x", a, b, g.ID))
	put(t, cli, prefix+"a", "3") // an update keeps the create revision
	r.waitFor(t, fmt.Sprintf("a=3@%d/0 b=2@%d/%x", a, b, g.ID))
	del(t, cli, prefix+"a")
	a2 := put(t, cli, prefix+"a", "3")
	r.waitFor(t, fmt.Sprintf("a=3@%d/0 b=2@%d/%x", a2, b, g.ID))
}

// Republish calls OnChange again with the current set and revision, from the Watcher's
// goroutine, also while the watch is quiet.
func TestRepublishReportsTheSetAgain(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rev := put(t, cli, prefix+"a", "1")
	r, w := start(t, cli)
	r.waitFor(t, "a=1")
	n := len(r.all())
	w.Republish()
	testutil.Eventually(t, "the set reported again", func() bool { return len(r.all()) == n+1 })
	if c, _ := r.last(); c.set != "a=1" || c.rev != rev {
		t.Fatalf("republished %+v, want a=1 at revision %d", c, rev)
	}
}

func TestUnansweredCoversEtcdsLeaderRefusals(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrLeaderChanged, true},
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrTimeoutDueToLeaderFail, true},
		{fmt.Errorf("put: %w", rpctypes.ErrLeaderChanged), true},
		{context.DeadlineExceeded, true},
		{status.Error(codes.Unavailable, "connection refused"), true},
		{rpctypes.ErrCompacted, false},
		{rpctypes.ErrLeaseNotFound, false},
		{errors.New("bad value"), false},
	} {
		if got := kvwatch.Unanswered(tc.err); got != tc.want {
			t.Errorf("Unanswered(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if got := errors.Is(kvwatch.Err(context.Background(), tc.err), kvwatch.ErrUnavailable); got != tc.want {
			t.Errorf("Err(%v) wraps ErrUnavailable: %v, want %v", tc.err, got, tc.want)
		}
	}
}
