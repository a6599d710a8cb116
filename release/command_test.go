package release_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/release"
	"github.com/switchyard-go/switchyard/traffic"
)

// fault is what lossyKV does to one write transaction.
type fault int

const (
	// lose: etcd applies the transaction, and its answer is lost on the way back (the client
	// sees context.DeadlineExceeded), as when the member that answered dies right after the
	// commit.
	lose fault = iota
	// drop: the transaction never reaches etcd, and the client sees context.DeadlineExceeded.
	drop
)

// lossyKV is a fault injector, not a mock of etcd (as traffic's tests'): every request goes
// to the real embedded etcd behind it, and the next write transactions (those that put), one
// fault each, have their answer lost. A lose fault applies to a transaction that etcd
// carried out (its compare held): one whose compare failed (a runner's write came in between
// the read and the swap) changed nothing, is answered as etcd answered it, and leaves the
// fault for the next. Transactions that only read pass. between, if set, runs after the last
// faulty transaction was (or was not) applied and before its caller sees the answer; each,
// if set, runs after every write transaction with the number of write transactions since the
// first faulty one, that one included (0 before it).
type lossyKV struct {
	clientv3.KV
	mu      sync.Mutex
	faults  []fault
	between func()
	each    func(n int)
	writes  int
	faulted int // l.writes when the first fault was applied; 0 before
}

// inject installs a lossyKV on cli, which must be the commanding Runner's own client.
func inject(cli *clientv3.Client, between func(), faults ...fault) *lossyKV {
	l := &lossyKV{KV: cli.KV, faults: faults, between: between}
	cli.KV = l
	return l
}

func (l *lossyKV) Txn(ctx context.Context) clientv3.Txn { return &lossyTxn{Txn: l.KV.Txn(ctx), l: l} }

// add appends faults for the next write transactions and returns the count so far.
func (l *lossyKV) add(faults ...fault) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.faults = append(l.faults, faults...)
	return l.writes
}

// count is the number of write transactions so far.
func (l *lossyKV) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

// sinceFault is the number of write transactions since the first faulty one, that one
// included: 0 while no fault was applied.
func (l *lossyKV) sinceFault() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.since()
}

func (l *lossyKV) since() int {
	if l.faulted == 0 {
		return 0
	}
	return l.writes - l.faulted + 1
}

// peek returns the next fault, if any, without taking it.
func (l *lossyKV) peek() (f fault, faulty bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.faults) == 0 {
		return 0, false
	}
	return l.faults[0], true
}

// done counts a write transaction, taking the next fault if it was applied to it, and
// returns what runs after it.
func (l *lossyKV) done(faulty bool) (between func(), each func(int), n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	if faulty {
		l.faults = l.faults[1:]
		if l.faulted == 0 {
			l.faulted = l.writes
		}
		if len(l.faults) == 0 {
			between, l.between = l.between, nil
		}
	}
	return between, l.each, l.since()
}

type lossyTxn struct {
	clientv3.Txn
	l     *lossyKV
	write bool
}

func (t *lossyTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *lossyTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		t.write = t.write || op.IsPut()
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *lossyTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *lossyTxn) Commit() (*clientv3.TxnResponse, error) {
	if !t.write {
		return t.Txn.Commit()
	}
	f, faulty := t.l.peek()
	var resp *clientv3.TxnResponse
	var err error
	if !faulty || f == lose {
		resp, err = t.Txn.Commit()
		if err != nil || !resp.Succeeded {
			faulty = false // nothing was applied: the fault waits for a transaction that is
		}
	}
	between, each, n := t.l.done(faulty)
	if each != nil {
		defer each(n)
	}
	if !faulty {
		return resp, err
	}
	if between != nil {
		between()
	}
	return nil, context.DeadlineExceeded
}

// cmdFixture is channel trade open, a runner driving a plan that holds step 1 (no instances,
// so no step can pass), and Runners that command it on clients of their own.
type cmdFixture struct {
	e      *etcdtest.Server
	lossy  *lossyKV // the runner's client's KV, without faults until told
	ctl    *traffic.Controller
	runner *release.Runner
	done   <-chan result
	stop   func()
}

func startCmdFixture(t *testing.T, drive bool) cmdFixture {
	t.Helper()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	f := cmdFixture{e: e, ctl: ctl, lossy: inject(cli, nil)} // before any goroutine reads cli.KV
	f.runner, err = release.New(release.Config{Client: cli, Poll: 50 * time.Millisecond, Timeout: 300 * time.Millisecond,
		Owner: "runner-1", Logger: testutil.Logger(t)}) // LockTTL 10 s: it outlasts a client's reconnection after Cut
	if err != nil {
		t.Fatal(err)
	}
	f.done, f.stop = start(t, f.runner, plan(20, step(10, time.Minute), step(100, time.Minute)))
	waitProgress(t, f.runner, "runner-1 to drive step 1", func(p release.Progress) bool { return p.Runner == "runner-1" && p.State == release.Running })
	if !drive {
		f.stop()
		testutil.Receive(t, "runner-1 to stop", f.done)
		waitProgress(t, f.runner, "runner-1's lock to go", func(p release.Progress) bool { return p.Runner == "" })
	}
	return f
}

// commander is a Runner named owner on a client of its own, direct to etcd (not through the
// cuttable proxy), so that its transactions can be made lossy alone.
func (f cmdFixture) commander(t *testing.T, owner string) (*release.Runner, *clientv3.Client) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.e.DirectEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	r, err := release.New(release.Config{Client: cli, Owner: owner, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return r, cli
}

// A command whose answer was lost after etcd recorded it is reported done, once the runner
// carried it out: the retry of the compare-and-swap finds the command's own id, pending or
// already kept as the last command, and waits for the runner as if the answer had come.
// (Before, Command returned "etcd unavailable", and a second pause got "is paused, not
// running: nothing to pause", the same answer as after another person's pause.)
func TestACommandWhoseAnswerWasLostIsReportedDone(t *testing.T) {
	for _, c := range []struct {
		name string
		// after runs once etcd recorded the command, before its answer (lost) comes back.
		after func(t *testing.T, f cmdFixture)
		cut   bool // the runner is cut off from etcd until the retry was sent
	}{
		{"carried out before the retry", func(t *testing.T, f cmdFixture) {
			waitProgress(t, f.runner, "runner-1 to carry out the pause", func(p release.Progress) bool { return p.State == release.Paused })
		}, false},
		{"pending at the retry", func(t *testing.T, f cmdFixture) { f.e.Cut() }, true},
		{"carried out, then another command", func(t *testing.T, f cmdFixture) {
			waitProgress(t, f.runner, "runner-1 to carry out the pause", func(p release.Progress) bool { return p.State == release.Paused })
			other, _ := f.commander(t, "bob")
			if _, err := other.Command(context.Background(), "trade", release.Resume); err != nil {
				t.Error(err)
			}
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startCmdFixture(t, true)
			r, cli := f.commander(t, "ann")
			l := inject(cli, func() { c.after(t, f) }, lose)
			if c.cut {
				defer f.e.Heal()
				l.each = func(n int) {
					if n == 2 {
						f.e.Heal() // the retry found the pause pending: the runner may now carry it out
					}
				}
			}
			start := time.Now()
			p, err := r.Command(context.Background(), "trade", release.Pause)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("pause whose answer was lost after etcd recorded it: %v; want it reported done", err)
			}
			if n := l.sinceFault(); n != 2 {
				t.Errorf("%d write transactions from the lost one on; want the lost one and one retry", n)
			}
			st, err := f.runner.Status(context.Background(), "trade")
			if err != nil || st.Command != "" || st.LastCommand == nil {
				t.Fatalf("status: %+v %v", st, err)
			}
			if c.name == "carried out, then another command" {
				if p.State != release.Running || st.LastCommand.Command != release.Resume || st.LastCommand.By != "bob" {
					t.Fatalf("returned %s; last command %+v; want bob's resume last", p.State, st.LastCommand)
				}
			} else if p.State != release.Paused || p.LastCommand == nil || p.LastCommand.By != "ann" || p.LastCommand.Command != release.Pause ||
				len(p.LastCommand.ID) != 16 || !strings.HasPrefix(p.Note, "paused by ann at ") || p.Runner != "runner-1" {
				t.Fatalf("pause returned %s, last command %+v, note %q, runner %q; want paused by ann, carried out by runner-1", p.State, p.LastCommand, p.Note, p.Runner)
			}
			t.Logf("pause with a lost answer (%s): done in %v", c.name, took.Round(time.Millisecond))
		})
	}
}

// Without a runner, a pause whose answer was lost finds its own id as the last command and
// is reported done.
func TestAPauseWithoutRunnerWhoseAnswerWasLostIsReportedDone(t *testing.T) {
	f := startCmdFixture(t, false)
	r, cli := f.commander(t, "ann")
	l := inject(cli, nil, lose)
	p, err := r.Command(context.Background(), "trade", release.Pause)
	if err != nil || p.State != release.Paused || p.LastCommand == nil || p.LastCommand.By != "ann" {
		t.Fatalf("pause without runner, answer lost: %s %+v %v; want paused by ann", p.State, p.LastCommand, err)
	}
	if n := l.sinceFault(); n != 2 {
		t.Errorf("%d write transactions from the lost one on; want the lost one and one retry", n)
	}
}

// A command whose first attempt never reached etcd, and that finds another person's command
// written in between, is not reported done: the error names the other command, who asked
// it, when, and whether it was carried out; nothing of this call's was recorded.
func TestAnotherCommandWhileTheAnswerWasLostIsNamed(t *testing.T) {
	for _, c := range []struct {
		name   string
		theirs release.Command
		drive  bool
		state  string
	}{
		{"with a runner", release.Pause, true, "was carried out at "},
		{"without a runner", release.Pause, false, "was carried out at "},
		{"abort with a runner", release.Abort, true, "was carried out at "},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startCmdFixture(t, c.drive)
			r, cli := f.commander(t, "ann")
			other, _ := f.commander(t, "bob")
			var theirs error
			l := inject(cli, func() { _, theirs = other.Command(context.Background(), "trade", c.theirs) }, drop)
			_, err := r.Command(context.Background(), "trade", release.Pause)
			if theirs != nil {
				t.Fatal(theirs)
			}
			var oc *release.OtherCommandError
			if !errors.As(err, &oc) || oc.Other.By != "bob" || oc.Other.Command != c.theirs || oc.Command != release.Pause ||
				!strings.Contains(err.Error(), "release: pause of channel trade not recorded: "+string(c.theirs)+" by bob (asked at ") ||
				!strings.Contains(err.Error(), c.state) {
				t.Fatalf("pause dropped while bob's %s came in: %v; want an OtherCommandError naming bob's %s", c.theirs, err, c.theirs)
			}
			if errors.Is(err, release.ErrEtcdUnavailable) || errors.Is(err, release.ErrOutcomeUnknown) {
				t.Fatalf("%v: the outcome is known; want no unavailable error", err)
			}
			if n := l.sinceFault(); n != 2 {
				t.Errorf("%d write transactions from the dropped one on; want the dropped one and one retry", n)
			}
			st, err := f.runner.Status(context.Background(), "trade")
			if err != nil || st.LastCommand == nil || st.LastCommand.By != "bob" {
				t.Fatalf("status: last command %+v %v; want bob's", st.LastCommand, err)
			}
		})
	}
}

// The same command pending (another person's) is waited for, not written again; a different
// one pending is refused, naming it.
func TestACommandPendingIsJoinedOrNamed(t *testing.T) {
	f := startCmdFixture(t, true)
	ann, _ := f.commander(t, "ann")
	f.e.Cut() // runner-1 cannot carry anything out; the commanders go direct
	bob, bcli := f.commander(t, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := bob.Command(ctx, "trade", release.Pause)
	if err == nil || !strings.Contains(err.Error(), "runner runner-1 has not carried out pause within ") || errors.Is(err, release.ErrEtcdUnavailable) {
		t.Fatalf("pause with the runner cut off: %v; want 'has not carried out', not unavailable", err)
	}
	_, err = ann.Command(context.Background(), "trade", release.Resume)
	if err == nil || !strings.Contains(err.Error(), "runner has not yet carried out pause (asked by bob at ") {
		t.Fatalf("resume while bob's pause is pending: %v", err)
	}
	l := inject(bcli, nil) // counts bob's writes
	joined := make(chan result, 1)
	go func() { p, err := ann.Command(context.Background(), "trade", release.Pause); joined <- result{p, err} }()
	f.e.Heal()
	res := testutil.Receive(t, "ann's pause", joined)
	if res.err != nil || res.p.State != release.Paused || res.p.LastCommand == nil || res.p.LastCommand.By != "bob" {
		t.Fatalf("ann's pause while bob's is pending: %s %+v %v; want bob's pause carried out", res.p.State, res.p.LastCommand, res.err)
	}
	if l.count() != 0 {
		t.Errorf("bob wrote %d times after", l.count())
	}
}

// A write of the runner whose answer was lost after etcd applied it (a figures update, or a
// command carried out) is sent again and recognised by its write id (Progress.Op): the
// runner goes on. (Before, its one attempt failed with "etcd unavailable" and Run stopped.)
func TestARunnerWriteWhoseAnswerWasLostGoesOn(t *testing.T) {
	f := startCmdFixture(t, true)
	l := f.lossy
	n := l.add(lose)
	testutil.Eventually(t, "runner-1 to write twice more", func() bool { return l.count() >= n+2 })
	select {
	case res := <-f.done:
		t.Fatalf("runner-1 stopped after a lost answer: %s, %v", res.p.State, res.err)
	default:
	}
	ann, _ := f.commander(t, "ann")
	p, err := ann.Command(context.Background(), "trade", release.Pause)
	if err != nil || p.State != release.Paused || p.Runner != "runner-1" {
		t.Fatalf("pause after runner-1 lost an answer: %s by %q, %v", p.State, p.Runner, err)
	}
}
