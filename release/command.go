package release

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
)

// Status reads channel's progress: the plan, its state and step, the current figures and
// the verdicts. Progress.Runner names the runner driving it now ("" when none does). The
// error wraps ErrNoPlan when no plan has run in the channel.
func (r *Runner) Status(ctx context.Context, channel string) (Progress, error) {
	if err := deploy.ValidateName("channel", channel); err != nil {
		return Progress{}, fmt.Errorf("release: %w", err)
	}
	rc, cancel := r.reqCtx(ctx)
	defer cancel()
	p, ok, err := readProgress(rc, r.cfg.Client, r.cfg.Prefix, channel)
	if err != nil {
		return Progress{}, err
	}
	if !ok {
		return Progress{}, noPlan(channel)
	}
	h, held, err := lockHolder(rc, r.cfg.Client, r.cfg.Prefix, channel)
	if err != nil {
		return Progress{}, err
	}
	if held {
		p.Runner = h.Owner
	}
	return p, nil
}

func noPlan(channel string) error {
	return fmt.Errorf("%w %s: start one with `switchyard release run plan.yaml`", ErrNoPlan, channel)
}

// ErrNoRunner: the command needs a runner, and none drives the channel.
var ErrNoRunner = errors.New("release: no runner drives the channel")

// Command asks channel's plan to pause, resume, promote or abort, and returns its progress
// once the command is carried out. If a runner drives the plan, the command is written into
// the progress record and the runner carries it out within a poll; Command waits for that
// (at most RequestTimeout). If none does (the runner was stopped), pause and resume change
// the recorded state for the next runner, abort switches back itself (under the channel's
// lock, so no runner starts meanwhile), and promote is refused with an error wrapping
// ErrNoRunner. A command that does not apply (resume of a plan that is not paused, any
// command on a plan that has ended) is refused, saying why.
func (r *Runner) Command(ctx context.Context, channel string, cmd Command) (Progress, error) {
	switch cmd {
	case Pause, Resume, Promote, Abort:
	default:
		return Progress{}, fmt.Errorf("release: unknown command %q: use %s, %s, %s or %s", cmd, Pause, Resume, Promote, Abort)
	}
	for {
		p, err := r.Status(ctx, channel)
		if err != nil {
			return Progress{}, err
		}
		if err := applies(channel, p, cmd); err != nil {
			return p, err
		}
		if p.Runner == "" {
			p, err = r.commandAlone(ctx, channel, p, cmd)
			if errors.Is(err, errChanged) {
				continue // a runner started, or another command: decide again
			}
			return p, err
		}
		p.Command, p.CommandBy, p.CommandAt = cmd, r.cfg.Owner, time.Now()
		rc, cancel := r.reqCtx(ctx)
		w, err := writeProgress(rc, r.cfg.Client, r.cfg.Prefix, p, 0)
		cancel()
		if errors.Is(err, errChanged) {
			continue
		}
		if err != nil {
			return p, err
		}
		return r.awaitCommand(ctx, channel, w, p.Runner)
	}
}

// applies says why cmd does not apply to p, or nil.
func applies(channel string, p Progress, cmd Command) error {
	switch {
	case p.State.Final():
		return fmt.Errorf("release: the plan of channel %s has ended (%s at step %d): nothing to %s; run a new plan with `switchyard release run plan.yaml`", channel, p.State, p.Step+1, cmd)
	case p.Command != "" && p.Command != cmd:
		return fmt.Errorf("release: channel %s's runner has not yet carried out %s (asked by %s at %s); wait for it, then ask again", channel, p.Command, p.CommandBy, p.CommandAt.Format("15:04:05"))
	case cmd == Pause && p.State != Running:
		return fmt.Errorf("release: the plan of channel %s is %s, not running: nothing to pause", channel, p.State)
	case cmd == Resume && p.State != Paused:
		return fmt.Errorf("release: the plan of channel %s is %s, not paused: nothing to resume", channel, p.State)
	}
	return nil
}

// awaitCommand waits until the runner has carried out the command written at w's revision.
func (r *Runner) awaitCommand(ctx context.Context, channel string, w Progress, runner string) (Progress, error) {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	key := deploy.RolloutKey(r.cfg.Prefix, channel)
	for ev := range r.cfg.Client.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(w.rev+1)) {
		if err := ev.Err(); err != nil {
			return w, etcdErr(ctx, err)
		}
		for _, e := range ev.Events {
			if e.Type != clientv3.EventTypePut {
				continue
			}
			p, err := decodeProgress(e.Kv.Value, e.Kv.ModRevision)
			if err != nil {
				return w, err
			}
			if p.Command == "" || p.State.Final() {
				p.Runner = runner
				return p, nil
			}
		}
	}
	if ctx.Err() != nil {
		return w, ctx.Err()
	}
	return w, fmt.Errorf("release: runner %s has not carried out %s within %v; it may be stuck or cut off from etcd: see `switchyard release status %s`; the command stays recorded for it",
		runner, w.Command, r.cfg.RequestTimeout, channel)
}

// commandAlone carries out cmd when no runner drives the channel.
func (r *Runner) commandAlone(ctx context.Context, channel string, p Progress, cmd Command) (Progress, error) {
	switch cmd {
	case Promote:
		return p, fmt.Errorf("%w %s: the plan is %s at step %d; run it again (`switchyard release run plan.yaml`) to resume it, then promote", ErrNoRunner, channel, p.State, p.Step+1)
	case Pause, Resume:
		if cmd == Pause {
			p.State, p.Note = Paused, fmt.Sprintf("paused by %s at %s (no runner was driving it): resume with `switchyard release resume %s`", r.cfg.Owner, time.Now().Format("15:04:05"), channel)
		} else {
			p.State, p.Note = Running, fmt.Sprintf("resumed by %s (no runner is driving it: run the plan again to go on)", r.cfg.Owner)
		}
		p.Command, p.CommandBy, p.CommandAt = "", "", time.Time{}
		rc, cancel := r.reqCtx(ctx)
		defer cancel()
		return writeProgress(rc, r.cfg.Client, r.cfg.Prefix, p, 0)
	}
	// Abort: take the lock, so that no runner starts while the traffic goes back.
	sess, err := r.session(ctx)
	if err != nil {
		return p, err
	}
	defer sess.Close()
	rc, cancel := r.reqCtx(ctx)
	lockRev, err := lock(rc, r.cfg.Client, r.cfg.Prefix, channel, sess.Lease(), r.cfg.Owner)
	cancel()
	if errors.Is(err, ErrHeld) {
		return p, errChanged // a runner started meanwhile: ask it
	}
	if err != nil {
		return p, err
	}
	ru := &run{r: r, plan: p.Plan, lockRev: lockRev, p: p}
	ru.tally = newTally(p.StepStarted.Unix())
	err = ru.switchBack(ctx, Aborted, "aborted", fmt.Sprintf("aborted by %s (no runner was driving it)", r.cfg.Owner), time.Time{})
	if errors.Is(err, ErrAborted) {
		err = nil
	}
	return ru.p, err
}
