// Package attempt makes one call's etcd requests in short attempts within the call's time, the
// way traffic's Controller does (traffic/controller_retry.go): a request that etcd does not
// answer — a write forwarded to a leader that has just died, a member without a leader, a
// broken connection (kvwatch.Unanswered) — costs an attempt, not the call.
//
// A Call takes its ctx's deadline as its time, or the request timeout when ctx has none. Each
// step of it (Do) makes attempts of First (500 ms), then twice as long as the one before, up
// to the request timeout, each within the call's time, with a jittered pause of 50 ms
// doubling up to 500 ms between them (so that attempts refused at once do not spin). Every
// attempt's ctx requires a leader, so a member without one refuses at once rather than
// holding the request. When the time runs out Do returns a *GaveUp saying what was tried.
//
// Sending a write again is only safe when the write cannot apply twice (a compare-and-swap
// against the read it was decided on) and when the caller can tell its own applied write from
// another's (a write id in the value); Call.Sent says whether a write may have been applied
// without an answer.
package attempt

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/backoff"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// Attempt timing (as traffic's Controller's).
const (
	First    = 500 * time.Millisecond // the first attempt of each step
	RetryMin = 50 * time.Millisecond  // the first pause between attempts
	RetryMax = 500 * time.Millisecond // the longest pause
)

// Call is one call's dealings with etcd. Not safe for concurrent use.
type Call struct {
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc
	max    time.Duration // the request timeout: the longest attempt
	budget time.Duration
	start  time.Time
	bo     backoff.Backoff

	attempts int
	sent     bool
	last     error
}

// Begin starts a call with ctx's time, or requestTimeout when ctx has no deadline; each
// attempt lasts at most requestTimeout. The caller calls Cancel when done.
func Begin(ctx context.Context, requestTimeout time.Duration) *Call {
	c := &Call{parent: ctx, max: requestTimeout, start: time.Now(), bo: backoff.Backoff{Min: RetryMin, Max: RetryMax}}
	if d, ok := ctx.Deadline(); ok {
		c.ctx, c.cancel = context.WithCancel(ctx)
		c.budget = time.Until(d)
	} else {
		c.ctx, c.cancel = context.WithTimeout(ctx, requestTimeout)
		c.budget = requestTimeout
	}
	return c
}

// Context is the call's context: it ends when the call's time does.
func (c *Call) Context() context.Context { return c.ctx }

// Cancel releases the call's context.
func (c *Call) Cancel() { c.cancel() }

// Sent reports whether an attempt of a write went unanswered: it may have been applied.
func (c *Call) Sent() bool { return c.sent }

// FirstAttempt is the length of a step's first attempt.
func (c *Call) FirstAttempt() time.Duration { return min(First, c.max) }

// Do runs one step of the call until etcd answers it: f is called with each attempt's ctx
// (its own deadline, a leader required). An attempt that etcd did not answer is made again
// after a short pause; write marks such attempts as possibly applied. An answer that is an
// error ends the step with it; the call's time running out ends it with a *GaveUp, or with
// the caller's ctx.Err() itself when the caller canceled a call that sent no write.
func (c *Call) Do(write bool, f func(ctx context.Context) error) error {
	d := c.FirstAttempt()
	for {
		actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(c.ctx), d)
		err := f(actx)
		cancel()
		switch {
		case err == nil:
			c.attempts++
			return nil
		case c.ctx.Err() == nil && !kvwatch.Unanswered(err):
			c.attempts++
			return err
		}
		c.Unanswered(err, write)
		d = min(2*d, c.max)
		if !c.Pause() {
			return c.GiveUp()
		}
	}
}

// Unanswered counts an attempt, made outside Do, that etcd did not answer with err; write
// marks it as possibly applied.
func (c *Call) Unanswered(err error, write bool) {
	c.attempts++
	c.last = err
	if write {
		c.sent = true
	}
}

// Pause waits before the next attempt; false when the call's time ran out first.
func (c *Call) Pause() bool {
	if c.ctx.Err() != nil {
		return false
	}
	t := time.NewTimer(c.bo.Next())
	defer t.Stop()
	select {
	case <-c.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// GiveUp is the error of a call whose time ran out while etcd did not answer: a *GaveUp, or
// the caller's ctx.Err() itself when the caller canceled a call that sent no write.
func (c *Call) GiveUp() error {
	if !c.sent && errors.Is(c.parent.Err(), context.Canceled) {
		return c.parent.Err()
	}
	last := c.last
	if last == nil {
		last = c.ctx.Err()
	}
	return &GaveUp{Attempts: c.attempts, Elapsed: time.Since(c.start), Budget: c.budget, First: c.FirstAttempt(), Max: c.max,
		Last: last, Sent: c.sent, CtxErr: c.parent.Err()}
}

// GaveUp says what a call whose time ran out while etcd did not answer tried. It wraps
// kvwatch.ErrUnavailable, the last attempt's error and the caller's ctx's error, if it ended.
// The caller wraps it in its own words (what the call was, what to check).
type GaveUp struct {
	Attempts int
	Elapsed  time.Duration
	Budget   time.Duration // the call's time
	First    time.Duration // the first attempt's length
	Max      time.Duration // the longest attempt (the request timeout)
	Last     error         // the last unanswered attempt's error
	Sent     bool          // an attempt of a write went unanswered: it may have been applied
	CtxErr   error         // the caller's ctx's error; nil when the call's own time (the request timeout) ran out
}

// Tried says, in a phrase, what was tried: "3 attempts in 1.2s (each up to 500ms, doubling up
// to 5s, within the call's 2s); the last failed with: …".
func (g *GaveUp) Tried() string {
	n := fmt.Sprintf("%d attempts", g.Attempts)
	if g.Attempts == 1 {
		n = "1 attempt"
	}
	within := fmt.Sprintf("the call's %v", g.Budget.Round(time.Millisecond))
	switch {
	case g.CtxErr == nil:
		within = fmt.Sprintf("the request timeout, %v, as the caller's context has no deadline", g.Max)
	case errors.Is(g.CtxErr, context.Canceled):
		within = "the caller's context, canceled"
	}
	return fmt.Sprintf("%s in %v (each up to %v, doubling up to %v, within %s); the last failed with: %v",
		n, g.Elapsed.Round(time.Millisecond), g.First, g.Max, within, g.Last)
}

func (g *GaveUp) Error() string { return "etcd unavailable: it did not answer " + g.Tried() }

func (g *GaveUp) Unwrap() []error {
	errs := []error{kvwatch.ErrUnavailable, g.Last}
	if g.CtxErr != nil {
		errs = append(errs, g.CtxErr)
	}
	return errs
}

// Elapsed is the time since the call began.
func (c *Call) Elapsed() time.Duration { return time.Since(c.start) }
