package release

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/attempt"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// Status reads channel's progress: the plan, its state and step, the current figures and
// the verdicts. Progress.Runner names the runner driving it now ("" when none does). The
// error wraps ErrNoPlan when no plan has run in the channel. etcd is read in attempts (the
// first 500 ms, doubling up to RequestTimeout) within ctx's time, or RequestTimeout when ctx
// has none.
func (r *Runner) Status(ctx context.Context, channel string) (Progress, error) {
	if err := deploy.ValidateName("channel", channel); err != nil {
		return Progress{}, fmt.Errorf("release: %w", err)
	}
	k := attempt.Begin(ctx, r.cfg.RequestTimeout)
	defer k.Cancel()
	p, err := r.status(k, channel)
	if err != nil {
		return Progress{}, explain(err, "status of channel "+channel, channel, false, "")
	}
	return p, nil
}

// status reads channel's progress and the holder of its lock, in one transaction made in
// attempts of call k.
func (r *Runner) status(k *attempt.Call, channel string) (Progress, error) {
	key, lockKey := deploy.RolloutKey(r.cfg.Prefix, channel), deploy.RolloutLockKey(r.cfg.Prefix, channel)
	var resp *clientv3.TxnResponse
	err := k.Do(false, func(ctx context.Context) (err error) {
		resp, err = r.cfg.Client.Txn(ctx).Then(clientv3.OpGet(key), clientv3.OpGet(lockKey)).Commit()
		return err
	})
	if err != nil {
		return Progress{}, err
	}
	runner := ""
	if lk := resp.Responses[1].GetResponseRange().GetKvs(); len(lk) > 0 {
		h := holder{Owner: "unknown"}
		_ = json.Unmarshal(lk[0].Value, &h)
		runner = h.Owner
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return Progress{Runner: runner}, noPlan(channel) // the runner's reread wants the holder still
	}
	p, err := decodeProgress(kvs[0].Value, kvs[0].ModRevision)
	if err != nil {
		return Progress{}, err
	}
	p.Runner = runner
	return p, nil
}

func noPlan(channel string) error {
	return fmt.Errorf("%w %s: start one with `switchyard release run plan.yaml`", ErrNoPlan, channel)
}

// ErrNoRunner: the command needs a runner, and none drives the channel.
var ErrNoRunner = errors.New("release: no runner drives the channel")

// ErrOutcomeUnknown is wrapped, with ErrEtcdUnavailable, by the error of a Command that sent
// its write to etcd and got no answer before its time ran out: the command may or may not
// have been recorded. Read the progress (Status; switchyard release status) before asking
// again.
var ErrOutcomeUnknown = errors.New("release: etcd did not confirm the command; it may have been recorded")

// OtherCommandError is the answer of a Command whose answer from etcd was lost, that sent the
// command again, and found that not it but another command (another person's) was written in
// between: this call's command was not recorded. Other is that command: what, who asked it,
// when, and when it was carried out (zero while it is pending).
type OtherCommandError struct {
	Channel string
	Command Command // this call's
	Other   CommandRecord
}

func (e *OtherCommandError) Error() string {
	state := "is pending"
	if !e.Other.DoneAt.IsZero() {
		state = "was carried out at " + e.Other.DoneAt.Local().Format("15:04:05.000")
	}
	return fmt.Sprintf("release: %s of channel %s not recorded: %s by %s (asked at %s) %s; it was written after this command read the plan's progress (etcd's answer to this command was lost; sent again, it found the record changed): see `switchyard release status %s`, then ask again if still wanted",
		e.Command, e.Channel, e.Other.Command, e.Other.By, e.Other.At.Local().Format("15:04:05.000"), state, e.Channel)
}

// newID returns a command id: 64 random bits in hex.
func newID() string { return fmt.Sprintf("%016x", rand.Uint64()) }

// Command asks channel's plan to pause, resume, promote or abort, and returns its progress
// once the command is carried out. If a runner drives the plan, the command is written into
// the progress record with an id of its own (Progress.CommandID), and the runner carries it
// out within a poll, keeping it as Progress.LastCommand; Command waits for that. If the same
// command is already pending (another person's), Command waits for it rather than write it
// again. If no runner drives the plan (it was stopped), pause and resume change the recorded
// state for the next runner, abort switches back itself (under the channel's lock, so no
// runner starts meanwhile), and promote is refused with an error wrapping ErrNoRunner. A
// command that does not apply (resume of a plan that is not paused, any command on a plan
// that has ended, a different command pending) is refused, saying why.
//
// The whole call, the wait for the runner included, takes ctx's time, or RequestTimeout
// when ctx has none. Each etcd request is made in attempts (the first 500 ms, doubling up to
// RequestTimeout) within it, so a leader change costs an attempt, not the call. A write is a
// compare-and-swap against the read it was decided on, so an attempt sent again never records
// the command twice; one whose answer was lost is recognised by its id — pending, carried
// out, or as the first change in etcd's history of the record — and the call goes on as if
// the answer had come. If instead another command was written in between, the error is an
// *OtherCommandError naming it. If etcd does not answer in time the error wraps
// ErrEtcdUnavailable, and ErrOutcomeUnknown when the write was sent; if etcd answers but the
// runner does not carry the command out in time, the error says so (the command stays
// recorded for it) and wraps neither.
func (r *Runner) Command(ctx context.Context, channel string, cmd Command) (Progress, error) {
	switch cmd {
	case Pause, Resume, Promote, Abort:
	default:
		return Progress{}, fmt.Errorf("release: unknown command %q: use %s, %s, %s or %s", cmd, Pause, Resume, Promote, Abort)
	}
	if err := deploy.ValidateName("channel", channel); err != nil {
		return Progress{}, fmt.Errorf("release: %w", err)
	}
	c := &commandCall{r: r, k: attempt.Begin(ctx, r.cfg.RequestTimeout), channel: channel, cmd: cmd, id: newID()}
	defer c.k.Cancel()
	p, err := c.run()
	if err != nil {
		err = explain(err, fmt.Sprintf("%s of channel %s", cmd, channel), channel, c.recorded, c.runner)
	}
	return p, err
}

// commandCall is one Command.
type commandCall struct {
	r       *Runner
	k       *attempt.Call
	channel string
	cmd     Command
	id      string

	recorded bool   // etcd confirmed that the command was recorded (or found it recorded)
	runner   string // the runner it waits for
}

func (c *commandCall) run() (Progress, error) {
	for {
		p, err := c.r.status(c.k, c.channel)
		if err != nil {
			return Progress{}, err
		}
		if err := applies(c.channel, p, c.cmd); err != nil {
			return p, err
		}
		next := p
		switch {
		case p.Runner != "" && p.Command == c.cmd:
			// The same command is pending, another person's: wait for it.
			c.runner, c.recorded = p.Runner, true
			return c.await(p)
		case p.Runner != "":
			next.Command, next.CommandBy, next.CommandAt, next.CommandID = c.cmd, c.r.cfg.Owner, time.Now(), c.id
		case c.cmd == Promote:
			return p, fmt.Errorf("%w %s: the plan is %s at step %d; run it again (`switchyard release run plan.yaml`) to resume it, then promote", ErrNoRunner, c.channel, p.State, p.Step+1)
		case c.cmd == Abort:
			p, err = c.abortAlone(p)
			if errors.Is(err, errChanged) {
				continue // a runner started meanwhile: ask it
			}
			return p, err
		default: // pause or resume, no runner: change the recorded state, for the next runner
			now := time.Now()
			if c.cmd == Pause {
				next.State, next.Note = Paused, fmt.Sprintf("paused by %s at %s (no runner was driving it): resume with `switchyard release resume %s`", c.r.cfg.Owner, now.Format("15:04:05"), c.channel)
			} else {
				next.State, next.Note = Running, fmt.Sprintf("resumed by %s (no runner is driving it: run the plan again to go on)", c.r.cfg.Owner)
			}
			next.Command, next.CommandBy, next.CommandAt, next.CommandID = "", "", time.Time{}, ""
			next.LastCommand = &CommandRecord{Command: c.cmd, ID: c.id, By: c.r.cfg.Owner, At: now, DoneAt: now}
		}
		w, err := c.write(p, next)
		if errors.Is(err, errChanged) {
			continue // the record changed (a runner's write, a runner started): decide again
		}
		if err != nil {
			return p, err
		}
		if w.CommandID != c.id {
			return w, nil // carried out: by this call (no runner), or found carried out by the runner
		}
		c.runner = w.Runner
		return c.await(w)
	}
}

// mine reports whether q carries this call's command, pending or carried out.
func (c *commandCall) mine(q Progress) bool {
	return q.CommandID == c.id || (q.LastCommand != nil && q.LastCommand.ID == c.id)
}

// write writes next over p, the record as read, with a compare-and-swap made in attempts. It
// returns the record written, or as found when it carries this call's command (an attempt
// whose answer was lost was applied). errChanged: the record changed since p and this call's
// write was not applied.
func (c *commandCall) write(p, next Progress) (Progress, error) {
	next.V = schemaVersion
	next.UpdatedAt = time.Now()
	next.Runner = ""
	data, err := json.Marshal(next)
	if err != nil {
		return p, fmt.Errorf("release: encoding the progress: %w", err)
	}
	key := deploy.RolloutKey(c.r.cfg.Prefix, c.channel)
	var resp *clientv3.TxnResponse
	err = c.k.Do(true, func(ctx context.Context) (err error) {
		resp, err = c.r.cfg.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", p.rev)).
			Then(clientv3.OpPut(key, string(data))).Else(clientv3.OpGet(key)).Commit()
		return err
	})
	if err != nil {
		return p, err
	}
	if resp.Succeeded {
		c.recorded = true
		next.rev, next.Runner = resp.Header.Revision, p.Runner
		return next, nil
	}
	var now *Progress
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		if q, err := decodeProgress(kvs[0].Value, kvs[0].ModRevision); err == nil {
			q.Runner = p.Runner
			if c.mine(q) {
				c.recorded = true // an earlier attempt was applied; its answer was lost
				return q, nil
			}
			now = &q
		}
	}
	if !c.k.Sent() || now == nil {
		return p, errChanged
	}
	return c.history(p, *now)
}

// history tells from etcd's history of the record, between p (the read the write was decided
// on) and now (the record as the failed swap found it), whether an attempt of this call's
// write was applied — it can only be the first change, being conditioned on p's revision —
// and, if not, which other command was written in between (an *OtherCommandError). When
// only runner writes came in between it returns errChanged: decide again.
func (c *commandCall) history(p, now Progress) (Progress, error) {
	key := deploy.RolloutKey(c.r.cfg.Prefix, c.channel)
	var evs []*clientv3.Event
	err := c.k.Do(false, func(ctx context.Context) error {
		evs = evs[:0]
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for resp := range c.r.cfg.Client.Watch(wctx, key, clientv3.WithRev(p.rev+1)) {
			if err := resp.Err(); err != nil {
				return err
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision > now.rev {
					return nil
				}
				evs = append(evs, ev)
				if ev.Kv.ModRevision == now.rev {
					return nil
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return errors.New("release: the etcd client was closed")
	})
	var gu *attempt.GaveUp
	switch {
	case errors.As(err, &gu):
		return p, err
	case err != nil:
		return p, fmt.Errorf("release: %s of channel %s: etcd's answer to the command was lost and the record has changed since; whether this command was recorded before that change cannot be told (%w: etcd's history of the record: %w); see `switchyard release status %s` before asking again",
			c.cmd, c.channel, ErrOutcomeUnknown, err, c.channel)
	}
	prev := p
	for i, ev := range evs {
		if ev.Type != clientv3.EventTypePut {
			return p, errChanged // the record was deleted: this command was not applied
		}
		q, err := decodeProgress(ev.Kv.Value, ev.Kv.ModRevision)
		if err != nil {
			continue
		}
		if i == 0 && c.mine(q) {
			// Applied, and since carried out (or cleared by the plan's end): now shows it.
			c.recorded = true
			return now, nil
		}
		if o, ok := newCommand(prev, q); ok {
			if l := now.LastCommand; l != nil && l.Command == o.Command && l.ID == o.ID && l.By == o.By && l.At.Equal(o.At) {
				o.DoneAt = l.DoneAt // carried out since
			}
			return p, &OtherCommandError{Channel: c.channel, Command: c.cmd, Other: o}
		}
		prev = q
	}
	return p, errChanged
}

// newCommand returns the command that q, the record after prev, has that prev had not: a
// new pending command, or one carried out without being pending (by a Command without a
// runner).
func newCommand(prev, q Progress) (CommandRecord, bool) {
	if q.Command != "" && !samePending(prev, q) {
		return CommandRecord{Command: q.Command, ID: q.CommandID, By: q.CommandBy, At: q.CommandAt}, true
	}
	if l := q.LastCommand; l != nil && (prev.LastCommand == nil || *prev.LastCommand != *l) &&
		!(prev.Command == l.Command && prev.CommandID == l.ID && prev.CommandBy == l.By) {
		return *l, true
	}
	return CommandRecord{}, false
}

// samePending reports whether a and b have the same pending command.
func samePending(a, b Progress) bool {
	return a.Command == b.Command && a.CommandID == b.CommandID && a.CommandBy == b.CommandBy && a.CommandAt.Equal(b.CommandAt)
}

// await waits until the runner has carried out the command pending in w (w.rev is the
// record's revision with it): the first change of the record without it, or with the plan
// ended. The watch is made again from the last revision seen when etcd drops it (a leader
// change), in attempts within the call's time.
func (c *commandCall) await(w Progress) (Progress, error) {
	key := deploy.RolloutKey(c.r.cfg.Prefix, c.channel)
	rev, d := w.rev, c.k.FirstAttempt()
	for {
		p, done, live, err := c.follow(key, w, &rev, d)
		switch {
		case done:
			p.Runner = w.Runner
			return p, nil
		case err == nil:
		case c.k.Context().Err() != nil && live:
			if !errors.Is(c.k.Context().Err(), context.DeadlineExceeded) {
				return w, c.k.Context().Err()
			}
			return w, fmt.Errorf("release: runner %s has not carried out %s within %v; it may be stuck or cut off from etcd: see `switchyard release status %s`; the command stays recorded for it",
				w.Runner, w.Command, c.k.Elapsed().Round(time.Millisecond), c.channel)
		case errors.Is(err, rpctypes.ErrCompacted):
			// The history since w was compacted: read the record as it is now.
			q, err := c.r.status(c.k, c.channel)
			if err != nil {
				return w, err
			}
			if !samePending(w, q) || q.State.Final() {
				return q, nil
			}
			rev = q.rev
			continue
		case !kvwatch.Unanswered(err):
			return w, err
		default:
			c.k.Unanswered(err, false)
			d = min(2*d, c.r.cfg.RequestTimeout)
		}
		if !c.k.Pause() {
			return w, c.k.GiveUp()
		}
	}
}

// follow watches key from *rev+1 for the change that carries out w's command; done when it
// came (p is the record then). live says the watch was established (etcd answered); a
// watch that is not established within d fails with context.DeadlineExceeded.
func (c *commandCall) follow(key string, w Progress, rev *int64, d time.Duration) (p Progress, done, live bool, err error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(c.k.Context()))
	defer cancel()
	wch := c.r.cfg.Client.Watch(wctx, key, clientv3.WithRev(*rev+1), clientv3.WithCreatedNotify())
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				if err := c.k.Context().Err(); err != nil {
					return w, false, live, err
				}
				return w, false, live, errors.New("release: the etcd client was closed")
			}
			if err := resp.Err(); err != nil {
				return w, false, live, err
			}
			if resp.Created {
				live = true
				t.Stop()
			}
			for _, ev := range resp.Events {
				*rev = ev.Kv.ModRevision
				if ev.Type != clientv3.EventTypePut {
					return w, false, live, fmt.Errorf("release: the progress record of channel %s was deleted while %s waited for its runner", c.channel, w.Command)
				}
				p, err := decodeProgress(ev.Kv.Value, ev.Kv.ModRevision)
				if err != nil {
					return w, false, live, err
				}
				if !samePending(w, p) || p.State.Final() {
					return p, true, live, nil
				}
			}
		case <-t.C:
			if !live {
				return w, false, false, context.DeadlineExceeded
			}
		}
	}
}

// applies says why cmd does not apply to p, or nil.
func applies(channel string, p Progress, cmd Command) error {
	last := ""
	if l := p.LastCommand; l != nil {
		last = fmt.Sprintf("; the last command was %s by %s, asked at %s, carried out at %s", l.Command, l.By, l.At.Local().Format("15:04:05.000"), l.DoneAt.Local().Format("15:04:05.000"))
	}
	switch {
	case p.State.Final():
		return fmt.Errorf("release: the plan of channel %s has ended (%s at step %d): nothing to %s%s; run a new plan with `switchyard release run plan.yaml`", channel, p.State, p.Step+1, cmd, last)
	case p.Command != "" && p.Command != cmd:
		return fmt.Errorf("release: channel %s's runner has not yet carried out %s (asked by %s at %s); wait for it, then ask again", channel, p.Command, p.CommandBy, p.CommandAt.Local().Format("15:04:05.000"))
	case cmd == Pause && p.State != Running:
		return fmt.Errorf("release: the plan of channel %s is %s, not running: nothing to pause%s", channel, p.State, last)
	case cmd == Resume && p.State != Paused:
		return fmt.Errorf("release: the plan of channel %s is %s, not paused: nothing to resume%s", channel, p.State, last)
	}
	return nil
}

// abortAlone switches back when no runner drives the channel, under the channel's lock so
// that no runner starts meanwhile. errChanged: a runner started; ask it.
func (c *commandCall) abortAlone(p Progress) (Progress, error) {
	r, ctx := c.r, c.k.Context()
	sess, err := r.session(ctx)
	if err != nil {
		return p, err
	}
	defer sess.Close()
	rc, cancel := r.reqCtx(ctx)
	lockRev, err := lock(rc, r.cfg.Client, r.cfg.Prefix, c.channel, sess.Lease(), r.cfg.Owner)
	cancel()
	if errors.Is(err, ErrHeld) {
		return p, errChanged
	}
	if err != nil {
		return p, err
	}
	// The abort, pending in the run's copy, is kept as LastCommand by the switch-back's write.
	p.Command, p.CommandBy, p.CommandAt, p.CommandID = Abort, r.cfg.Owner, time.Now(), c.id
	ru := &run{r: r, plan: p.Plan, lockRev: lockRev, p: p}
	ru.tally = newTally(p.StepStarted.Unix())
	err = ru.switchBack(ctx, Aborted, "aborted", fmt.Sprintf("aborted by %s (no runner was driving it)", r.cfg.Owner), time.Time{})
	if errors.Is(err, ErrAborted) {
		err = nil
	}
	c.recorded = err == nil
	return ru.p, err
}

// explain turns a call's *attempt.GaveUp into the error that says what the call was, what
// was tried, and what may have been recorded; other errors pass through.
func explain(err error, what, channel string, recorded bool, runner string) error {
	var gu *attempt.GaveUp
	if !errors.As(err, &gu) {
		return err
	}
	return &unansweredError{what: what, channel: channel, g: gu, recorded: recorded, runner: runner}
}

// unansweredError is the error of a call whose time ran out while etcd did not answer.
type unansweredError struct {
	what, channel string
	g             *attempt.GaveUp
	recorded      bool
	runner        string
}

func (e *unansweredError) Error() string {
	switch {
	case e.recorded:
		return fmt.Sprintf("release: %s: the command was recorded, but etcd did not answer while it waited for runner %s to carry it out: %s; see `switchyard release status %s` (the runner carries it out once it reaches etcd)",
			e.what, e.runner, e.g.Tried(), e.channel)
	case e.g.Sent:
		return fmt.Sprintf("release: %s: etcd unavailable; the command was sent but etcd did not confirm it: %s; it may have been recorded: see `switchyard release status %s` before asking again",
			e.what, e.g.Tried(), e.channel)
	}
	return fmt.Sprintf("release: %s: etcd unavailable; check that etcd is running and reachable at the client's endpoints: it did not answer %s; nothing was recorded",
		e.what, e.g.Tried())
}

func (e *unansweredError) Unwrap() []error {
	errs := []error{e.g}
	if e.g.Sent && !e.recorded {
		errs = append(errs, ErrOutcomeUnknown)
	}
	return errs
}
