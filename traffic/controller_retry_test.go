package traffic_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/traffic"
)

// fault is what lossyKV does to one transaction.
type fault int

const (
	// lose: etcd applies the transaction, and its answer is lost on the way back (the client
	// sees context.DeadlineExceeded), as when the member that answered dies right after the
	// commit.
	lose fault = iota
	// drop: the transaction never reaches etcd, and the client sees context.DeadlineExceeded.
	drop
	// hang: the transaction never reaches etcd and no answer comes until the attempt's
	// deadline, as with a request forwarded to a leader that has just died.
	hang
	// pass: the transaction goes to etcd and its answer (or error) comes back as it is; only
	// the hooks run.
	pass
)

// lossyKV is a fault injector, not a mock of etcd: every request goes to the real (embedded)
// etcd behind it, and the next transactions, one fault each, have their answer lost in one of
// the ways above. before, if set, runs just before the first of them is sent (a leader
// killed as the write leaves); between, if set, runs after the last of them was (or was not)
// applied and before its caller sees the answer: another operator's write, or a leader
// killed, in that window.
type lossyKV struct {
	clientv3.KV
	mu              sync.Mutex
	faults          []fault
	before, between func()
	txns            int // transactions committed through the injector, faulty or not
}

// inject installs a lossyKV on cli, which must be the controller's own client, in place of
// the one installed before, if any (whose faults not yet used are dropped).
func inject(cli *clientv3.Client, between func(), faults ...fault) *lossyKV {
	kv := cli.KV
	if l, ok := kv.(*lossyKV); ok {
		kv = l.KV
	}
	l := &lossyKV{KV: kv, faults: faults, between: between}
	cli.KV = l
	return l
}

func (l *lossyKV) Txn(ctx context.Context) clientv3.Txn {
	return &lossyTxn{Txn: l.KV.Txn(ctx), ctx: ctx, l: l}
}

func (l *lossyKV) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.txns
}

// next returns the next transaction's fault and the hooks to run around it.
func (l *lossyKV) next() (f fault, before, between func(), faulty bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.txns++
	if len(l.faults) == 0 {
		return 0, nil, nil, false
	}
	f, l.faults = l.faults[0], l.faults[1:]
	before, l.before = l.before, nil // once, before the first fault's transaction
	if len(l.faults) == 0 {
		between, l.between = l.between, nil // once, after the last fault's transaction
	}
	return f, before, between, true
}

type lossyTxn struct {
	clientv3.Txn
	ctx context.Context
	l   *lossyKV
}

func (t *lossyTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *lossyTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *lossyTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *lossyTxn) Commit() (*clientv3.TxnResponse, error) {
	f, before, between, faulty := t.l.next()
	if !faulty {
		return t.Txn.Commit()
	}
	if before != nil {
		before()
	}
	var resp *clientv3.TxnResponse
	err := context.DeadlineExceeded
	switch f {
	case lose:
		if _, err := t.Txn.Commit(); err != nil {
			return nil, err
		}
	case hang:
		<-t.ctx.Done()
	case pass:
		resp, err = t.Txn.Commit()
	}
	if between != nil {
		between()
	}
	return resp, err
}

// lossy returns a controller whose client loses answers as told, and a second controller on
// a client of its own (another operator). Both have RequestTimeout 5 s, the default.
func lossy(t *testing.T) (e *etcdtest.Server, ctl *traffic.Controller, cli *clientv3.Client, other *traffic.Controller) {
	t.Helper()
	e = etcdtest.Start(t)
	cli = e.Client(t)
	var err error
	if ctl, err = traffic.NewController(traffic.Config{Client: cli}); err != nil {
		t.Fatal(err)
	}
	if other, err = traffic.NewController(traffic.Config{Client: e.Client(t)}); err != nil {
		t.Fatal(err)
	}
	return e, ctl, cli, other
}

// version is the number of writes of channel's key since it was created.
func version(t *testing.T, cli *clientv3.Client, channel string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/switchyard/channels/"+channel)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].Version
}

// A write that etcd applied but whose answer was lost is reported as done: the retry finds
// the call's own write id in the rule and returns that rule, and the rule was written once.
// (Before, Open, Shift and Finish returned "etcd unavailable" for it, and a retried Finish
// got ErrNotOpen.)
func TestAWriteWhoseAnswerWasLostIsReportedDone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, c := range []struct {
		name string
		prep func(*traffic.Controller) error
		do   func(*traffic.Controller) (traffic.Rule, error)
		want func(traffic.Rule) bool
	}{
		{"open", nil,
			func(ctl *traffic.Controller) (traffic.Rule, error) { return ctl.Open(ctx, "trade", []string{"order"}) },
			func(r traffic.Rule) bool { return r.Releasing && r.BluePercent == 50 }},
		{"shift", func(ctl *traffic.Controller) error { _, err := ctl.Open(ctx, "trade", []string{"order"}); return err },
			func(ctl *traffic.Controller) (traffic.Rule, error) { return ctl.Shift(ctx, "trade", 10) },
			func(r traffic.Rule) bool { return r.Releasing && r.BluePercent == 10 }},
		{"finish", func(ctl *traffic.Controller) error { _, err := ctl.Open(ctx, "trade", []string{"order"}); return err },
			func(ctl *traffic.Controller) (traffic.Rule, error) {
				return ctl.Finish(ctx, "trade", traffic.Reason("done by ann"))
			},
			func(r traffic.Rule) bool { return !r.Releasing && r.Reason == "done by ann" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, ctl, cli, _ := lossy(t)
			if c.prep != nil {
				if err := c.prep(ctl); err != nil {
					t.Fatal(err)
				}
			}
			before := version(t, cli, "trade")
			l := inject(cli, nil, lose)
			r, err := c.do(ctl)
			if err != nil {
				t.Fatalf("%s whose answer was lost after etcd applied it: %v; want it reported done", c.name, err)
			}
			stored, err := ctl.Get(ctx, "trade")
			if err != nil || !stored.Equal(r) || !c.want(r) || len(r.Op) != 16 {
				t.Fatalf("%s returned %+v; stored %+v (%v): want the stored rule, as asked, with a 16-digit write id", c.name, r, stored, err)
			}
			if n := version(t, cli, "trade") - before; n != 1 {
				t.Fatalf("the key was written %d times by one %s; want once", n, c.name)
			}
			if n := l.count(); n != 2 {
				t.Fatalf("%d transactions; want the lost one and one retry", n)
			}
		})
	}
}

// A write whose answer was lost and that finds another write's change is not reported done:
// the answer is the one the call gets against the rule now (ErrNotOpen after another
// Finish, ErrAlreadyOpen after another Open, ErrConflict after another Shift), and the error
// says that another write did it, with its reason and time. (Before: "etcd unavailable",
// then a plain ErrNotOpen on retry, indistinguishable from a Finish of one's own.)
func TestAnotherWriteWhileTheAnswerWasLostIsNamed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, c := range []struct {
		name, say string
		open      bool
		mine      func(*traffic.Controller) error
		theirs    func(*traffic.Controller) error
		is        error
		blue      float64 // the rule's blue percent after both
	}{
		{"finish", "the release was finished by another write", true,
			func(ctl *traffic.Controller) error { _, err := ctl.Finish(ctx, "trade"); return err },
			func(o *traffic.Controller) error {
				_, err := o.Finish(ctx, "trade", traffic.Reason("rollback by ann"))
				return err
			},
			traffic.ErrNotOpen, 50},
		{"open", "the release was opened by another write", false,
			func(ctl *traffic.Controller) error { _, err := ctl.Open(ctx, "trade", []string{"order"}); return err },
			func(o *traffic.Controller) error {
				_, err := o.Open(ctx, "trade", []string{"order"}, traffic.Reason("rollback by ann"))
				return err
			},
			traffic.ErrAlreadyOpen, 50},
		{"shift", "the rule was changed by another write", true,
			func(ctl *traffic.Controller) error { _, err := ctl.Shift(ctx, "trade", 10); return err },
			func(o *traffic.Controller) error {
				_, err := o.Shift(ctx, "trade", 20, traffic.Reason("rollback by ann"))
				return err
			},
			traffic.ErrConflict, 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, ctl, cli, other := lossy(t)
			if c.open {
				if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
					t.Fatal(err)
				}
			}
			var theirs error
			inject(cli, func() { theirs = c.theirs(other) }, drop)
			err := c.mine(ctl)
			if theirs != nil {
				t.Fatal(theirs)
			}
			var ow *traffic.OtherWriteError
			if !errors.Is(err, c.is) || !errors.As(err, &ow) || ow.Other.Reason != "rollback by ann" || ow.Deleted ||
				!strings.Contains(err.Error(), c.say) || !strings.Contains(err.Error(), `reason: "rollback by ann"`) || !strings.Contains(err.Error(), "not applied") {
				t.Fatalf("%s that lost its answer, after another write: %v; want an OtherWriteError wrapping %v that says %q and names its reason", c.name, err, c.is, c.say)
			}
			if errors.Is(err, traffic.ErrEtcdUnavailable) || errors.Is(err, traffic.ErrOutcomeUnknown) {
				t.Fatalf("%v: the outcome is known; want no unavailable error", err)
			}
			if r, err := ctl.Get(ctx, "trade"); err != nil || r.Reason != "rollback by ann" || r.BluePercent != c.blue {
				t.Fatalf("rule after both: %+v %v; want the other write's", r, err)
			}
		})
	}
}

// A write applied, then changed by another write before the retry, is still this call's:
// etcd's history shows its write came first. The call reports it done.
func TestAnAppliedWriteChangedSinceIsReportedDone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, ctl, cli, other := lossy(t)
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	var theirs error
	inject(cli, func() { _, theirs = other.Shift(ctx, "trade", 20, traffic.Reason("ann")) }, lose)
	r, err := ctl.Shift(ctx, "trade", 10)
	if theirs != nil {
		t.Fatal(theirs)
	}
	if err != nil || r.BluePercent != 10 || r.Op == "" {
		t.Fatalf("Shift applied, answer lost, then another Shift: %+v %v; want this Shift's rule, done", r, err)
	}
	if now, err := ctl.Get(ctx, "trade"); err != nil || now.BluePercent != 20 || now.Op == r.Op {
		t.Fatalf("rule now %+v %v; want the other Shift's", now, err)
	}
}

// Delete after a lost answer: the key it read being gone is success; a key changed by
// another write first is an OtherWriteError wrapping ErrConflict.
func TestADeleteWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, ctl, cli, other := lossy(t)
	for _, ch := range []string{"pay", "trade"} {
		if _, err := ctl.Open(ctx, ch, []string{ch + "-app"}); err != nil {
			t.Fatal(err)
		}
	}
	l := inject(cli, nil, lose)
	if err := ctl.Delete(ctx, "pay", true); err != nil {
		t.Fatalf("Delete applied, answer lost: %v; want it done", err)
	}
	if n := l.count(); n != 2 {
		t.Fatalf("%d transactions; want the lost one and one retry", n)
	}
	if version(t, cli, "pay") != 0 {
		t.Fatal("pay's key is still there")
	}
	var theirs error
	inject(cli, func() { _, theirs = other.Shift(ctx, "trade", 0, traffic.Reason("ann drains")) }, drop)
	err := ctl.Delete(ctx, "trade", true)
	if theirs != nil {
		t.Fatal(theirs)
	}
	var ow *traffic.OtherWriteError
	if !errors.Is(err, traffic.ErrConflict) || !errors.As(err, &ow) || ow.Other.Reason != "ann drains" {
		t.Fatalf("Delete dropped, then another Shift: %v; want an OtherWriteError wrapping ErrConflict naming the Shift", err)
	}
	if version(t, cli, "trade") == 0 {
		t.Fatal("trade's key was deleted over another write")
	}
}

// A request that etcd never answers (one sent to a leader that just died) costs the call one
// short attempt, not its whole time: the write is sent again at once and answered. Before,
// the one attempt waited out RequestTimeout (5 s) and failed.
func TestAnUnansweredRequestCostsOneShortAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, ctl, cli, _ := lossy(t)
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	inject(cli, nil, hang)
	start := time.Now()
	r, err := ctl.Finish(ctx, "trade")
	took := time.Since(start)
	if err != nil || r.Releasing {
		t.Fatalf("Finish after an unanswered attempt: %+v %v", r, err)
	}
	// One attempt is 500 ms; RequestTimeout is 5 s. The margin is for an oversubscribed CPU.
	if took > 3*time.Second {
		t.Fatalf("Finish took %v after one unanswered attempt; want about one attempt (500 ms), well under the 5 s request timeout", took)
	}
}

// When etcd answers no attempt of the write within the call's time, the error says so: what
// was tried, for how long, that the write may have been applied, and how to check. It wraps
// ErrEtcdUnavailable, ErrOutcomeUnknown and the caller's deadline. A call that could not
// even read says that nothing was written.
func TestAWriteEtcdNeverAnswers(t *testing.T) {
	t.Parallel()
	e, ctl, cli, _ := lossy(t)
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	inject(cli, nil, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop, drop)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := ctl.Finish(ctx, "trade")
	if !errors.Is(err, traffic.ErrEtcdUnavailable) || !errors.Is(err, traffic.ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), "may have been applied") || !strings.Contains(err.Error(), "attempts in") ||
		!strings.Contains(err.Error(), "switchyard channel status trade") {
		t.Fatalf("Finish that etcd never answers: %v; want an unavailable error saying the attempts, that it may have been applied and how to check", err)
	}

	e.Cut()
	defer e.Heal()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	_, err = ctl.Shift(ctx2, "trade", 10)
	if !errors.Is(err, traffic.ErrEtcdUnavailable) || errors.Is(err, traffic.ErrOutcomeUnknown) || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("Shift while etcd is cut off: %v; want an unavailable error saying nothing was written", err)
	}
}
