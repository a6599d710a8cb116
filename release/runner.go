package release

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/attempt"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// Defaults of Config.
const (
	DefaultPoll    = 250 * time.Millisecond
	DefaultTimeout = 500 * time.Millisecond
	DefaultLockTTL = 10 * time.Second
)

// Config configures a Runner.
type Config struct {
	// Client is the etcd client. Required; not closed by the Runner.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// Poll is how often a running plan reads the channel's instances' /stats and judges the
	// step; a breach is switched back within about one Poll of the poll that shows it.
	// Default DefaultPoll (250 ms).
	Poll time.Duration
	// Timeout bounds each instance's /stats request and each app's read of its records.
	// Default DefaultTimeout (500 ms).
	Timeout time.Duration
	// RequestTimeout caps each etcd request. Default registry.DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// LockTTL is the TTL of the lease the runner's lock lives on: a runner that dies without
	// releasing it (killed, its host gone) holds the channel that long. Whole seconds, at
	// least 1. Default DefaultLockTTL (10 s).
	LockTTL time.Duration
	// Owner names this process in the lock, the progress record and the rule's reasons.
	// Default "<hostname>/pid <pid>".
	Owner string
	// Logger receives a line per step, verdict and command, with the figures. Default
	// slog.Default().
	Logger *slog.Logger
	// HTTPClient reads the instances' /stats. Default: one of the Runner's own.
	HTTPClient *http.Client
}

// Runner runs release plans and carries commands to them. Its methods are safe for
// concurrent use; Run drives one plan until it ends.
type Runner struct {
	cfg Config
	ctl *traffic.Controller
}

// New checks cfg and returns a Runner.
func New(cfg Config) (*Runner, error) {
	if cfg.Client == nil {
		return nil, errors.New("release: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = registry.DefaultRequestTimeout
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = DefaultLockTTL
	}
	cfg.LockTTL = max(time.Second, cfg.LockTTL.Round(time.Second))
	if cfg.Owner == "" {
		host, _ := os.Hostname()
		cfg.Owner = fmt.Sprintf("%s/pid %d", host, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctl, err := traffic.NewController(traffic.Config{Client: cfg.Client, Prefix: cfg.Prefix, RequestTimeout: cfg.RequestTimeout, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	return &Runner{cfg: cfg, ctl: ctl}, nil
}

// ErrSwitchedBack is wrapped by the error of a Run whose step failed: all traffic went back
// to the old color. The error's message is the verdict.
var ErrSwitchedBack = errors.New("release: switched back")

// ErrAborted is wrapped by the error of a Run that was aborted (Abort).
var ErrAborted = errors.New("release: aborted")

// endError is how a plan that did not succeed ended: its verdict.
type endError struct {
	kind    error
	verdict Verdict
}

func (e *endError) Error() string        { return "release: " + e.verdict.Explanation }
func (e *endError) Is(target error) bool { return target == e.kind }

// run is one Run: its plan's state between polls.
type run struct {
	r       *Runner
	plan    Plan
	lockRev int64
	apps    []string
	col     *dashboard.Collector
	tally   *tally
	p       Progress // the record as last read or written
	// sampleAt is when each app first had the minimum sample in the current step.
	sampleAt   map[string]time.Time
	lastStatus time.Time
	lastKey    string
}

// Run drives plan until it ends. It takes the channel's runner lock (a second runner gets
// an error wrapping ErrHeld that names the holder), checks that the channel's release is open,
// and starts at the first step, or resumes the plan in progress in the channel's record
// (same plan) at its step: the step's hold goes on from the recorded moment its analysis
// could judge, and its figures are read again from the instances' windows, since the
// step's start (within their last minute). It returns the progress at the end: nil error
// when the plan succeeded; an error wrapping ErrSwitchedBack (its message the verdict) when
// a step failed and traffic went back to the old color, or ErrAborted after Abort. When ctx
// ends first, Run returns an error wrapping ctx.Err() and the plan stays where it is, for
// the next Run to resume.
func (r *Runner) Run(ctx context.Context, plan Plan) (Progress, error) {
	plan = plan.WithDefaults()
	if err := plan.Validate(); err != nil {
		return Progress{}, err
	}
	sess, err := r.session(ctx)
	if err != nil {
		return Progress{}, err
	}
	defer sess.Close() // revokes the lease: the lock goes with it, also when ctx has ended
	rc, cancel := r.reqCtx(ctx)
	lockRev, err := lock(rc, r.cfg.Client, r.cfg.Prefix, plan.Channel, sess.Lease(), r.cfg.Owner)
	cancel()
	if err != nil {
		return Progress{}, err
	}
	rule, err := r.openRule(ctx, plan.Channel)
	if err != nil {
		return Progress{}, err
	}
	col, err := dashboard.NewCollector(dashboard.Config{Client: r.cfg.Client, Prefix: r.cfg.Prefix, Timeout: r.cfg.Timeout, HTTPClient: r.cfg.HTTPClient})
	if err != nil {
		return Progress{}, fmt.Errorf("release: %w", err)
	}
	defer col.Close()
	ru := &run{r: r, plan: plan, lockRev: lockRev, apps: rule.Apps, col: col, sampleAt: map[string]time.Time{}}
	if err := ru.start(ctx, rule); err != nil {
		return ru.p, err
	}
	return ru.loop(ctx, sess)
}

// session starts the lease the runner's lock lives on. Its keepalives do not end with ctx
// (Close ends them), so that Close can still revoke the lease after ctx ended: the lock goes
// at once rather than after LockTTL.
func (r *Runner) session(ctx context.Context) (*concurrency.Session, error) {
	rc, cancel := r.reqCtx(ctx)
	defer cancel()
	lease, err := r.cfg.Client.Grant(rc, int64(r.cfg.LockTTL/time.Second))
	if err != nil {
		return nil, etcdErr(ctx, err)
	}
	sess, err := concurrency.NewSession(r.cfg.Client, concurrency.WithLease(lease.ID),
		concurrency.WithTTL(int(r.cfg.LockTTL/time.Second)), // bounds Close's revoke
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, etcdErr(ctx, err)
	}
	return sess, nil
}

// reqCtx bounds one etcd request.
func (r *Runner) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.RequestTimeout)
}

// openRule reads channel's rule and checks that its release is open.
func (r *Runner) openRule(ctx context.Context, channel string) (traffic.Rule, error) {
	rule, err := r.ctl.Get(ctx, channel)
	switch {
	case errors.Is(err, traffic.ErrUnknownChannel):
		return traffic.Rule{}, fmt.Errorf("release: channel %s has no rule: open the release with `switchyard channel open %s --apps a,b`, deploy the new color, then run the plan", channel, channel)
	case err != nil:
		return traffic.Rule{}, fmt.Errorf("release: %w", err)
	case !rule.Releasing:
		return traffic.Rule{}, fmt.Errorf("release: channel %s has no release open: open it with `switchyard channel open %s --apps %s`, deploy the new color, then run the plan",
			channel, channel, joinApps(rule.Apps))
	}
	return rule, nil
}

func joinApps(apps []string) string {
	if len(apps) == 0 {
		return "a,b"
	}
	s := apps[0]
	for _, a := range apps[1:] {
		s += "," + a
	}
	return s
}

// start begins the plan at its first step, or resumes the one in progress.
func (ru *run) start(ctx context.Context, rule traffic.Rule) error {
	r := ru.r
	rc, cancel := r.reqCtx(ctx)
	p, ok, err := readProgress(rc, r.cfg.Client, r.cfg.Prefix, ru.plan.Channel)
	cancel()
	if err != nil && !errors.Is(err, ErrMalformedProgress) {
		return err
	}
	if ok && !p.State.Final() {
		if !reflect.DeepEqual(p.Plan, ru.plan) {
			return fmt.Errorf("release: channel %s has a plan in progress (%s at step %d of %d, by %s) that differs from this one: run it again with the same plan file to resume it, or abort it with `switchyard release abort %s` first",
				ru.plan.Channel, p.State, p.Step+1, len(p.Plan.Steps), p.Owner, ru.plan.Channel)
		}
		ru.p = p
		return ru.resume(ctx, rule)
	}
	// A new plan (over a final one, or a record that cannot be read: it is replaced).
	now := time.Now()
	ru.p = Progress{Plan: ru.plan, State: Running, Started: now, Owner: r.cfg.Owner, rev: p.rev}
	if !ok && err != nil { // malformed: overwrite whatever is there
		ru.p.rev = -1
	}
	r.cfg.Logger.Info("release: starting the plan", "channel", ru.plan.Channel, "new", ru.plan.New, "steps", len(ru.plan.Steps), "owner", r.cfg.Owner)
	return ru.enter(ctx, 0, rule.BluePercent, "release started by "+r.cfg.Owner, nil)
}

// resume takes over the plan in progress in ru.p at its step.
func (ru *run) resume(ctx context.Context, rule traffic.Rule) error {
	r, p := ru.r, ru.p
	want := ru.plan.BluePercent(ru.plan.Steps[p.Step].Percent)
	switch rule.BluePercent {
	case want:
	case p.FromBlue:
		// The runner stopped between recording the step and shifting the rule: shift now.
	default:
		return fmt.Errorf("release: channel %s is at %s %% blue, but step %d of its plan puts it at %s %% (it was %s %% before): someone moved the traffic; abort the plan with `switchyard release abort %s`, or shift the channel back to %s %% and run the plan again",
			ru.plan.Channel, fmtPercent(rule.BluePercent), p.Step+1, fmtPercent(want), fmtPercent(p.FromBlue), ru.plan.Channel, fmtPercent(want))
	}
	r.cfg.Logger.Info("release: resuming the plan", "channel", ru.plan.Channel, "state", p.State, "step", p.Step+1, "percent", ru.plan.Steps[p.Step].Percent,
		"step_started", p.StepStarted, "previous_owner", p.Owner, "owner", r.cfg.Owner)
	if err := ru.save(ctx, func(p *Progress) error { p.Owner = r.cfg.Owner; return nil }); err != nil {
		return err
	}
	if rule.BluePercent != want {
		if err := ru.shift(ctx, want, ru.stepReason(p.Step, "resumed by "+r.cfg.Owner)); err != nil {
			return err
		}
	}
	ru.tally = newTally(ru.p.StepStarted.Unix())
	return nil
}

// enter records step i and shifts the rule to it (from: the rule's blue percent before);
// also, if not nil, changes the same write (the verdict of the step before).
func (ru *run) enter(ctx context.Context, i int, from float64, why string, also func(*Progress)) error {
	err := ru.save(ctx, func(p *Progress) error {
		if also != nil {
			also(p)
		}
		p.Step, p.StepStarted, p.FromBlue = i, time.Now(), from
		p.JudgeableAt, p.Figures, p.FiguresAt, p.Note = time.Time{}, nil, time.Time{}, ""
		if p.State != Paused {
			p.State = Running
		}
		return nil
	})
	if err != nil {
		return err
	}
	ru.tally = newTally(ru.p.StepStarted.Unix())
	clear(ru.sampleAt)
	step := ru.plan.Steps[i]
	ru.r.cfg.Logger.Info("release: step", "channel", ru.plan.Channel, "step", i+1, "of", len(ru.plan.Steps), "percent", step.Percent,
		"color", ru.plan.New, "hold", step.Hold, "why", why)
	return ru.shift(ctx, ru.plan.BluePercent(step.Percent), ru.stepReason(i, why))
}

// stepReason is the rule's reason for step i.
func (ru *run) stepReason(i int, why string) string {
	return fmt.Sprintf("release step %d/%d (%s %s %%): %s", i+1, len(ru.plan.Steps), ru.plan.New, fmtPercent(ru.plan.Steps[i].Percent), why)
}

// shift writes the rule's blue percent, retrying until it is written or ctx ends: a step
// and above all a switch-back must not be lost to a passing etcd error.
func (ru *run) shift(ctx context.Context, blue float64, reason string) error {
	for {
		_, err := ru.r.ctl.Shift(ctx, ru.plan.Channel, blue, reasonOpt(reason)...)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, traffic.ErrNotOpen) || errors.Is(err, traffic.ErrUnknownChannel):
			return fmt.Errorf("release: channel %s's release was closed while the plan ran (%w); the plan stops", ru.plan.Channel, err)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		ru.r.cfg.Logger.Warn("release: shifting the rule failed; retrying", "channel", ru.plan.Channel, "blue_percent", blue, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// reasonOpt is the rule write option that carries reason, cut to what a rule holds.
func reasonOpt(reason string) []traffic.WriteOption {
	if len(reason) > traffic.MaxReasonLen {
		cut := traffic.MaxReasonLen - len("…")
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "…"
	}
	return []traffic.WriteOption{traffic.Reason(reason)}
}

// save applies change to the latest record and writes it, on the runner's lock. A
// concurrent write (a command) makes it read and apply again.
func (ru *run) save(ctx context.Context, change func(*Progress) error) error {
	r := ru.r
	for {
		p := ru.p
		if err := change(&p); err != nil {
			return err
		}
		// Each request in attempts within RequestTimeout: a leader change costs an attempt.
		k := attempt.Begin(ctx, r.cfg.RequestTimeout)
		if p.rev < 0 { // overwrite a malformed record
			_ = k.Do(false, func(rc context.Context) error {
				resp, err := r.cfg.Client.Get(rc, deploy.RolloutKey(r.cfg.Prefix, ru.plan.Channel))
				if err == nil {
					p.rev = 0
					if len(resp.Kvs) > 0 {
						p.rev = resp.Kvs[0].ModRevision
					}
				}
				return err
			})
		}
		w, err := writeProgress(k, r.cfg.Client, r.cfg.Prefix, p, ru.lockRev)
		k.Cancel()
		if err == nil {
			ru.p = w
			return nil
		}
		if !errors.Is(err, errChanged) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if err := ru.reread(ctx); err != nil {
			return err
		}
	}
}

// reread reads the record again; it fails if the runner lost its lock.
func (ru *run) reread(ctx context.Context) error {
	r := ru.r
	// Read in attempts within RequestTimeout: a leader change costs an attempt.
	k := attempt.Begin(ctx, r.cfg.RequestTimeout)
	defer k.Cancel()
	p, err := r.status(k, ru.plan.Channel)
	ok := !errors.Is(err, ErrNoPlan)
	if err != nil && ok {
		return err
	}
	if p.Runner != r.cfg.Owner {
		return fmt.Errorf("release: lost the lock of channel %s (its lease expired: etcd was unreachable for longer than %v); the plan stops where it is, at step %d: run it again to resume",
			ru.plan.Channel, r.cfg.LockTTL, ru.p.Step+1)
	}
	p.Runner = ""
	if !ok {
		p = Progress{Plan: ru.plan, State: Running}
		p.Step, p.StepStarted, p.Started, p.Owner = ru.p.Step, ru.p.StepStarted, ru.p.Started, ru.p.Owner
	}
	ru.p = p
	return nil
}

// loop polls and judges until the plan ends.
func (ru *run) loop(ctx context.Context, sess *concurrency.Session) (Progress, error) {
	r := ru.r
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := r.cfg.Client.Watch(clientv3.WithRequireLeader(wctx), deploy.RolloutKey(r.cfg.Prefix, ru.plan.Channel))
	tick := time.NewTicker(r.cfg.Poll)
	defer tick.Stop()
	for first := true; ; first = false {
		polled := first
		if !first {
			select {
			case <-ctx.Done():
				return ru.p, fmt.Errorf("release: the runner stopped (%w); the plan stays %s at step %d of channel %s: run it again to resume, or abort it", ctx.Err(), ru.p.State, ru.p.Step+1, ru.plan.Channel)
			case <-sess.Done():
				if ctx.Err() != nil {
					continue // the ctx.Done case, next time round
				}
				return ru.p, fmt.Errorf("release: lost the lock of channel %s (its lease expired: etcd was unreachable for longer than %v); the plan stops at step %d: run it again to resume", ru.plan.Channel, r.cfg.LockTTL, ru.p.Step+1)
			case _, ok := <-watch:
				if !ok {
					watch = nil // the ticks go on; commands wait for the next one
				}
			case <-tick.C:
				polled = true
			}
		}
		if err := ru.reread(ctx); err != nil {
			if ctx.Err() != nil {
				continue
			}
			if errors.Is(err, ErrEtcdUnavailable) {
				r.cfg.Logger.Warn("release: reading the progress failed; retrying", "channel", ru.plan.Channel, "err", err)
				continue
			}
			return ru.p, err
		}
		if ru.p.Command != "" {
			done, err := ru.command(ctx)
			if done || err != nil {
				return ru.p, err
			}
		}
		if !polled {
			continue
		}
		done, err := ru.poll(ctx)
		if done || err != nil {
			if err != nil && ctx.Err() != nil {
				continue
			}
			return ru.p, err
		}
	}
}

// command carries out the record's pending command; done says the plan ended.
func (ru *run) command(ctx context.Context) (done bool, err error) {
	r, p := ru.r, ru.p
	cmd, by := p.Command, p.CommandBy
	clearCmd := (*Progress).carryOut // kept as LastCommand: a Command whose answer was lost finds its id there
	r.cfg.Logger.Info("release: command", "channel", ru.plan.Channel, "command", cmd, "by", by, "state", p.State, "step", p.Step+1)
	switch cmd {
	case Abort:
		return true, ru.switchBack(ctx, Aborted, "aborted", fmt.Sprintf("aborted by %s", by), time.Time{})
	case Pause:
		return false, ru.save(ctx, func(p *Progress) error {
			clearCmd(p)
			if p.State == Running {
				p.State, p.Note = Paused, fmt.Sprintf("paused by %s at %s: resume with `switchyard release resume %s`", by, time.Now().Format("15:04:05"), ru.plan.Channel)
			}
			return nil
		})
	case Resume:
		return false, ru.save(ctx, func(p *Progress) error {
			clearCmd(p)
			if p.State == Paused {
				p.State, p.Note = Running, fmt.Sprintf("resumed by %s", by)
			}
			return nil
		})
	case Promote:
		figs := ru.tally.figures(ru.apps, ru.plan.New, ru.plan.Old())
		return ru.pass(ctx, "promoted", fmt.Sprintf("promoted by %s (%s)", by, describe(ru.plan.New, ru.plan.Old(), figs)), figs, clearCmd)
	default:
		return false, ru.save(ctx, func(p *Progress) error {
			clearCmd(p)
			p.Note = fmt.Sprintf("ignored the unknown command %q from %s", cmd, by)
			return nil
		})
	}
}

// pass ends the current step with outcome ("passed" or "promoted"): the next step, or the
// plan's end.
func (ru *run) pass(ctx context.Context, outcome, why string, figs []Figures, also func(*Progress)) (bool, error) {
	i := ru.p.Step
	step := ru.plan.Steps[i]
	v := Verdict{Step: i, Percent: step.Percent, Outcome: outcome, At: time.Now(), Figures: figs,
		Explanation: fmt.Sprintf("step %d (%s %%) %s: %s", i+1, fmtPercent(step.Percent), outcome, why)}
	if ru.p.State == Waiting && outcome == "promoted" {
		v.Explanation = fmt.Sprintf("the plan was %s at its end: %s", outcome, why)
	}
	r := ru.r
	r.cfg.Logger.Info("release: verdict", "channel", ru.plan.Channel, "step", i+1, "percent", step.Percent, "outcome", outcome, "verdict", v.Explanation)
	last := i == len(ru.plan.Steps)-1
	if !last {
		return false, ru.enter(ctx, i+1, ru.plan.BluePercent(step.Percent), v.Explanation, func(p *Progress) {
			if also != nil {
				also(p)
			}
			p.Verdicts = append(p.Verdicts, v)
			if outcome == "promoted" && p.State == Paused {
				p.State = Running
			}
		})
	}
	final := ru.p.State == Waiting || outcome == "promoted" || ru.plan.AtEnd == AtEndDone
	err := ru.save(ctx, func(p *Progress) error {
		if also != nil {
			also(p)
		}
		p.Verdicts = append(p.Verdicts, v)
		if final {
			p.State, p.Note = Succeeded, fmt.Sprintf("succeeded: %s has %s %% of the traffic; close the release with `switchyard channel finish %s` once the old color is redeployed",
				ru.plan.New, fmtPercent(step.Percent), ru.plan.Channel)
		} else {
			p.State, p.Note = Waiting, fmt.Sprintf("the last step passed; waiting for `switchyard release promote %s`", ru.plan.Channel)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if final {
		r.cfg.Logger.Info("release: the plan succeeded", "channel", ru.plan.Channel, "color", ru.plan.New, "percent", step.Percent)
	}
	return final, nil
}

// switchBack sends all traffic to the old color and ends the plan in state.
func (ru *run) switchBack(ctx context.Context, state State, outcome, why string, sampleAt time.Time, figs ...Figures) error {
	i := ru.p.Step
	step := ru.plan.Steps[i]
	detected := time.Now()
	if err := ru.shift(ctx, ru.plan.BluePercent(0), fmt.Sprintf("release step %d (%s %s %%) %s: %s; all traffic back to %s", i+1, ru.plan.New, fmtPercent(step.Percent), outcome, why, ru.plan.Old())); err != nil {
		return err
	}
	done := time.Now()
	v := Verdict{Step: i, Percent: step.Percent, Outcome: outcome, At: detected, Figures: figs, SampleAt: sampleAt, SwitchedBackAt: done}
	v.Explanation = fmt.Sprintf("step %d (%s %%) %s: %s; all traffic back to %s", i+1, fmtPercent(step.Percent), outcome, why, ru.plan.Old())
	if !sampleAt.IsZero() {
		v.Explanation = fmt.Sprintf("step %d (%s %%) %s: %s; switched back in %s s", i+1, fmtPercent(step.Percent), outcome, why, fmtSeconds(done.Sub(sampleAt)))
	}
	kind := ErrSwitchedBack
	if state == Aborted {
		kind = ErrAborted
	}
	ru.r.cfg.Logger.Warn("release: switched back", "channel", ru.plan.Channel, "step", i+1, "percent", step.Percent, "outcome", outcome,
		"verdict", v.Explanation, "detection", v.Detection())
	err := ru.save(ctx, func(p *Progress) error {
		p.carryOut() // the abort carried out, or a pending command the end makes moot
		p.State, p.Note = state, fmt.Sprintf("all traffic is on %s; fix %s and run a plan again, or close the release with `switchyard channel finish %s`", ru.plan.Old(), ru.plan.New, ru.plan.Channel)
		p.Verdicts = append(p.Verdicts, v)
		return nil
	})
	if err != nil {
		return err
	}
	return &endError{kind: kind, verdict: v}
}

// fmtSeconds writes d in seconds with up to three decimals: "0.4", "0.012".
func fmtSeconds(d time.Duration) string {
	return strconv.FormatFloat(math.Round(d.Seconds()*1000)/1000, 'f', -1, 64)
}

// poll reads the instances, judges the step and acts; done says the plan ended.
func (ru *run) poll(ctx context.Context) (bool, error) {
	r, p := ru.r, ru.p
	if ru.tally == nil || ru.tally.from != p.StepStarted.Unix() {
		ru.tally = newTally(p.StepStarted.Unix())
		clear(ru.sampleAt)
	}
	samples, appErrs := ru.col.Poll(ctx, ru.apps)
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	for app, err := range appErrs {
		r.cfg.Logger.Warn("release: reading an app's instances failed; using the last ones read", "channel", ru.plan.Channel, "app", app, "err", err)
	}
	now := time.Now()
	ru.tally.add(now, samples)
	figs := ru.tally.figures(ru.apps, ru.plan.New, ru.plan.Old())
	a := ru.plan.Analysis
	for _, f := range figs {
		if f.NewRequests >= uint64(a.MinRequests) && ru.sampleAt[f.App].IsZero() {
			ru.sampleAt[f.App] = now
		}
	}
	j := judge(a, ru.plan.New, ru.plan.Old(), figs)
	if j.breach >= 0 {
		f := figs[j.breach]
		sampleAt := ru.sampleAt[f.App]
		return true, ru.switchBack(ctx, SwitchedBack, "failed", j.why, sampleAt, figs...)
	}
	step := ru.plan.Steps[p.Step]
	var note, key string
	switch {
	case len(j.short) > 0:
		note = fmt.Sprintf("step %d (%s %%): %s", p.Step+1, fmtPercent(step.Percent), shortOf(ru.plan.New, a.MinRequests, j.short))
		key = "short"
	case p.JudgeableAt.IsZero():
		if err := ru.save(ctx, func(p *Progress) error { p.JudgeableAt = now; return nil }); err != nil {
			return false, err
		}
		r.cfg.Logger.Info("release: the step can be judged", "channel", ru.plan.Channel, "step", p.Step+1, "figures", describe(ru.plan.New, ru.plan.Old(), figs))
		p = ru.p
		fallthrough
	default:
		passAt := p.JudgeableAt.Add(time.Duration(step.Hold))
		if p.State == Running && !now.Before(passAt) {
			return ru.pass(ctx, "passed", describe(ru.plan.New, ru.plan.Old(), figs), figs, nil)
		}
		note = fmt.Sprintf("step %d (%s %%): no breach so far (%s); passes at %s", p.Step+1, fmtPercent(step.Percent), describe(ru.plan.New, ru.plan.Old(), figs), passAt.Format("15:04:05.0"))
		key = "judging"
	}
	switch p.State {
	case Paused:
		note, key = p.Note, key+"/paused"
	case Waiting:
		note, key = p.Note, key+"/waiting"
	}
	if key != ru.lastKey || now.Sub(ru.lastStatus) >= ru.statusEvery() {
		err := ru.save(ctx, func(p *Progress) error {
			p.Figures, p.FiguresAt, p.Note = figs, now, note
			return nil
		})
		if err != nil {
			return false, err
		}
		ru.lastKey, ru.lastStatus = key, now
	}
	return false, nil
}

// statusEvery is how often the figures are written to the record while nothing else
// changes: about once a second, more often with a shorter Poll.
func (ru *run) statusEvery() time.Duration { return min(time.Second, 4*ru.r.cfg.Poll) }
