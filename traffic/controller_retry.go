package traffic

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/backoff"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// How a Controller call deals with etcd: every request is an attempt with a short deadline,
// and an attempt that etcd did not answer is made again while the call has time. A write is
// a compare-and-swap against the read it was decided on, so sending it again can never apply
// it twice; and the rule it writes carries the call's write id (Rule.Op), so an attempt that
// finds the swap failed can tell "an earlier attempt of mine was applied" from "someone else
// changed the rule".

// Attempt timing: the first attempt of each step (a read, a write) has firstAttempt, each
// retry twice the one before, up to Config.RequestTimeout; between attempts the call waits a
// jittered retryMin, doubling up to retryMax, so that attempts that fail at once (no leader,
// connection refused) do not spin.
const (
	firstAttempt = 500 * time.Millisecond
	retryMin     = 50 * time.Millisecond
	retryMax     = 500 * time.Millisecond
)

// ErrOutcomeUnknown is wrapped, with ErrEtcdUnavailable, by the error of a Controller write
// that etcd did not answer before the call's time ran out, after at least one attempt of the
// write was sent: it may or may not have been applied. Read the rule (Get; switchyard channel
// status) before writing again. A call that fails before sending its write says "nothing was
// written" instead and does not wrap it.
var ErrOutcomeUnknown = errors.New("traffic: etcd did not confirm the write; it may have been applied")

// OtherWriteError is the answer of a Controller write whose answer from etcd was lost, that
// sent the write again, and found that not it but another write (another operator, a release
// runner) had changed the rule since the call read it: this call's write was not applied. Err
// is the answer the call gets against the rule as it is now — wrapping ErrNotOpen after
// another Finish, ErrAlreadyOpen after another Open, ErrUnknownChannel after a Delete, and
// ErrConflict when the call's decision would still be possible but was made on a rule that
// has changed — so errors.Is works as for a call that never lost an answer. Other is the
// rule the other write left (its Reason and UpdatedAt say who and when); zero when it
// deleted the rule.
type OtherWriteError struct {
	Channel string
	Err     error
	Other   Rule
	Deleted bool

	what string // the call, e.g. `finish of channel "trade"`
}

func (e *OtherWriteError) Error() string {
	var what string
	switch {
	case e.Deleted:
		what = "its rule was deleted by another write"
	case errors.Is(e.Err, ErrNotOpen):
		what = "the release was finished by another write"
	case errors.Is(e.Err, ErrAlreadyOpen):
		what = "the release was opened by another write"
	default:
		what = "the rule was changed by another write"
	}
	var by []string
	if !e.Deleted {
		if e.Other.Reason != "" {
			by = append(by, fmt.Sprintf("reason: %q", e.Other.Reason))
		} else {
			by = append(by, "no reason given")
		}
		if !e.Other.UpdatedAt.IsZero() {
			by = append(by, "at "+e.Other.UpdatedAt.UTC().Format(time.RFC3339Nano))
		}
	}
	detail := ""
	if len(by) > 0 {
		detail = " (" + strings.Join(by, ", ") + ")"
	}
	return fmt.Sprintf("traffic: %s not applied: %s%s after this request read the rule (etcd's answer to this request was lost; sent again, the write found the rule changed): %s",
		e.what, what, detail, strings.TrimPrefix(e.Err.Error(), "traffic: "))
}

func (e *OtherWriteError) Unwrap() error { return e.Err }

// newOp returns a write id for Rule.Op: 64 random bits in hex.
func newOp() string { return fmt.Sprintf("%016x", rand.Uint64()) }

// call is one Controller call's dealings with etcd: its time, its attempts, and whether a
// write of it may have been applied without an answer.
type call struct {
	c       *Controller
	what    string // what the call does, for errors: `finish of channel "trade"`
	channel string // "" for calls of every channel
	parent  context.Context
	ctx     context.Context // parent, bounded by RequestTimeout when parent has no deadline
	cancel  context.CancelFunc
	budget  time.Duration // the call's time, when known
	start   time.Time
	bo      backoff.Backoff

	attempts int
	sent     bool  // an attempt of the write went unanswered: it may have been applied
	last     error // the error of the last attempt that went unanswered
}

// begin starts a call. It takes ctx's time, or Config.RequestTimeout when ctx has no
// deadline. The caller calls k.cancel when done.
func (c *Controller) begin(ctx context.Context, what, channel string) *call {
	k := &call{c: c, what: what, channel: channel, parent: ctx, start: time.Now(), bo: backoff.Backoff{Min: retryMin, Max: retryMax}}
	if d, ok := ctx.Deadline(); ok {
		k.ctx, k.cancel = context.WithCancel(ctx)
		k.budget = time.Until(d)
	} else {
		k.ctx, k.cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		k.budget = c.cfg.RequestTimeout
	}
	return k
}

// do runs one step of the call until etcd answers it: each attempt of f gets its own
// deadline (firstAttempt, doubling up to RequestTimeout, within the call's time) and a ctx
// that makes etcd refuse at once when it has no leader. An attempt that etcd did not answer
// is made again after a short backoff; write marks such attempts as possibly applied. An
// answer that is an error ends the step with it; the call's time running out ends it with
// giveUp's error.
func (k *call) do(write bool, f func(ctx context.Context) error) error {
	d := min(firstAttempt, k.c.cfg.RequestTimeout)
	for {
		actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(k.ctx), d)
		err := f(actx)
		cancel()
		k.attempts++
		switch {
		case err == nil:
			return nil
		case k.ctx.Err() == nil && !unanswered(err):
			return err
		}
		k.last = err
		if write {
			k.sent = true
		}
		if k.ctx.Err() != nil {
			return k.giveUp()
		}
		d = min(2*d, k.c.cfg.RequestTimeout)
		t := time.NewTimer(k.bo.Next())
		select {
		case <-k.ctx.Done():
			t.Stop()
			return k.giveUp()
		case <-t.C:
		}
	}
}

// unanswered reports whether err says etcd did not answer: the attempt's deadline, a broken
// connection, or a member without a leader (gRPC Unavailable, also as etcd's own error type,
// e.g. "etcdserver: leader changed").
func unanswered(err error) bool { return kvwatch.Unanswered(err) }

// giveUp is the error of a call whose time ran out while etcd did not answer. The caller's
// cancellation of a call that wrote nothing comes back as ctx.Err() itself.
func (k *call) giveUp() error {
	if !k.sent && errors.Is(k.parent.Err(), context.Canceled) {
		return k.parent.Err()
	}
	return &unansweredError{k: *k, elapsed: time.Since(k.start), ctxErr: k.parent.Err()}
}

// unansweredError is giveUp's error: it says what was tried, for how long, and whether the
// write may have been applied.
type unansweredError struct {
	k       call
	elapsed time.Duration
	ctxErr  error // the caller's ctx's error, if it ended
}

func (e *unansweredError) Error() string {
	k := e.k
	n := fmt.Sprintf("%d attempts", k.attempts)
	if k.attempts == 1 {
		n = "1 attempt"
	}
	within := fmt.Sprintf("the call's %v", k.budget.Round(time.Millisecond))
	if e.ctxErr == nil {
		within = fmt.Sprintf("the request timeout, %v, as the caller's context has no deadline", k.c.cfg.RequestTimeout)
	} else if errors.Is(e.ctxErr, context.Canceled) {
		within = "the caller's context, canceled"
	}
	tried := fmt.Sprintf("%s in %v (each up to %v, doubling up to %v, within %s); the last failed with: %v",
		n, e.elapsed.Round(time.Millisecond), min(firstAttempt, k.c.cfg.RequestTimeout), k.c.cfg.RequestTimeout, within, k.last)
	if !k.sent {
		return fmt.Sprintf("traffic: %s: etcd unavailable; check that etcd is running and reachable at the client's endpoints: it did not answer %s; nothing was written", k.what, tried)
	}
	check := "read the rules"
	if k.channel != "" {
		check = fmt.Sprintf("read the rule (Controller.Get; switchyard channel status %s)", k.channel)
	}
	return fmt.Sprintf("traffic: %s: etcd unavailable; the write was sent but etcd did not confirm it: %s; it may have been applied: %s before writing again",
		k.what, tried, check)
}

func (e *unansweredError) Unwrap() []error {
	errs := []error{ErrEtcdUnavailable, e.k.last}
	if e.k.sent {
		errs = append(errs, ErrOutcomeUnknown)
	}
	if e.ctxErr != nil {
		errs = append(errs, e.ctxErr)
	}
	return errs
}

// historyErr is the error of call k when firstChange failed with err: the call's write went
// unanswered and the rule has changed since, so it may have been applied before that change.
func (k *call) historyErr(err error) error {
	var ue *unansweredError
	if errors.As(err, &ue) {
		return err
	}
	return fmt.Errorf("traffic: %s: etcd's answer to the write was lost and the rule has changed since; whether this request's write was applied before that change cannot be told (%w: etcd's history of the key: %w); read the rule before writing again",
		k.what, ErrOutcomeUnknown, err)
}

// firstChange returns the first change of key after revision rev, from etcd's history; it
// exists (the caller saw the key change since rev). It fails if that history was compacted.
func (k *call) firstChange(key string, rev int64) (*clientv3.Event, error) {
	var first *clientv3.Event
	err := k.do(false, func(ctx context.Context) error {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for resp := range k.c.cfg.Client.Watch(wctx, key, clientv3.WithRev(rev+1)) {
			if err := resp.Err(); err != nil {
				return err
			}
			if len(resp.Events) > 0 {
				first = resp.Events[0]
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return errors.New("traffic: the etcd client was closed")
	})
	return first, err
}
