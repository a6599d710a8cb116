package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/robfig/cron/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// The executor's work, a file each: its session in etcd (session.go: lease, registration,
// keep-alive, renewal, revocation), its leadership (leader.go: election, the assignment it
// writes as leader, reacting to membership and drains), and its schedule (schedule.go:
// triggers, claims per (item, trigger), runs, misfires). This file holds the Executor and
// its public API.

// Executor runs the items of one job that the leader assigns to it (DESIGN.md "Job
// isolation"). Every executor registers under its session lease and campaigns to lead; the
// leader assigns items 0..N-1 evenly to the executors whose color is not drained and writes a
// versioned assignment, guarded by its election key. At each trigger an executor claims
// (item, trigger) in etcd with a transaction that also checks the assignment it acts on is
// still current, so it never starts an item it no longer owns and no item runs twice for one
// trigger. Drains come from Config.Drains: an executor of a drained color starts nothing,
// and the leader reassigns at each change of its drains. It is a lifecycle component
// (lifecycle.Instance.Append): Stop waits for runs in progress (at most StopTimeout and
// Stop's ctx, then cancels them) and deregisters, so the leader reassigns its items at once.
//
// Every etcd request is capped by Config.RequestTimeout and by the ctx of the loop or call
// that makes it, which Stop ends first: nothing the executor does waits for etcd beyond those.
//
// Locking: the fields above mu are set by NewExecutor (recheck by NoRecheck, before Start)
// and only read after, or are safe for concurrent use on their own (the WaitGroups, nRun,
// kick). mu guards the fields below it. It is never held while a handler runs, nor across an
// etcd request or a wait, but by Start: Start holds it while it registers, so that two Starts
// do not both register (nothing else of the executor runs yet; a Stop meanwhile waits for
// Start's requests, each capped by RequestTimeout). Whoever needs several of the fields at
// once (a trigger with the assignment's items and revision; Stop's cancel funcs and
// sessions) copies them under one hold of mu.
type Executor struct {
	cfg   Config
	sched cron.Schedule
	keys  struct{ exec, election, assignment, runs, executors string }
	log   *slog.Logger
	color deploy.Color  // the Drains' color, fixed
	kick  chan struct{} // wakes the leader: the executors or the assignment changed
	// recheck is how often the leader checks the assignment with nothing to wake it.
	recheck time.Duration
	loops   sync.WaitGroup // the goroutines Start starts; Stop waits for them
	runs    sync.WaitGroup // runs in progress
	nRun    atomic.Int64   // runs started
	worker  deploy.Worker  // the Drains, if they are told of work; else nil
	runsC   metric.Int64Counter
	outcome [2]metric.AddOption // switchyard.job.runs' attributes, ok and error, built once

	mu        sync.Mutex
	started   bool
	ctx       context.Context // the loops'; ends when Stop begins
	cancel    context.CancelFunc
	runCtx    context.Context // the runs'; ends at Stop's deadline
	runCancel context.CancelFunc
	assign    assignment
	assignRv  int64 // revision the assignment is known at
	assignBad bool  // the assignment key holds what no leader writes (refused since assign)
	last      time.Time
	execs     []executorRecord
	sess      *session
	claims    *session
}

// NewExecutor checks cfg.
func NewExecutor(cfg Config) (*Executor, error) {
	sched, err := cfg.setDefaults()
	if err != nil {
		return nil, err
	}
	color := deploy.None
	if cfg.Drains != nil {
		color = cfg.Drains.Color()
	}
	if !color.Valid() {
		return nil, fmt.Errorf("job: Config.Drains has color %q; want blue, green or none", color)
	}
	e := &Executor{cfg: cfg, sched: sched, color: color, log: cfg.Logger.With("job", cfg.Job.Name, "executor", cfg.ID),
		kick: make(chan struct{}, 1), recheck: time.Second}
	e.worker, _ = cfg.Drains.(deploy.Worker)
	e.runsC, err = cfg.MeterProvider.Meter(meterName).Int64Counter("switchyard.job.runs",
		metric.WithDescription("Runs of a job item the executor's handler ran, by job, the executor's color and outcome."),
		metric.WithUnit("{run}"))
	if err != nil {
		e.log.Warn("job: cannot create metric switchyard.job.runs; it is not recorded", "err", err)
		e.runsC = noop.Int64Counter{}
	}
	for i, outcome := range [2]string{"ok", "error"} {
		e.outcome[i] = metric.WithAttributeSet(attribute.NewSet(
			attribute.String("switchyard.job", cfg.Job.Name),
			attribute.String("switchyard.color", string(color)),
			attribute.String("switchyard.outcome", outcome)))
	}
	p := deploy.JobPrefix(cfg.Prefix, cfg.Job.Name)
	e.keys.executors = p + "executors/"
	e.keys.exec = e.keys.executors + cfg.ID
	e.keys.election = p + "leader"
	e.keys.assignment = p + "assignment"
	e.keys.runs = p + "runs/"
	return e, nil
}

const meterName = "github.com/switchyard-go/switchyard/job"

// Runs counts the runs this executor started.
func (e *Executor) Runs() int64 { return e.nRun.Load() }

// Start registers the executor and starts following the assignment and the schedule. It
// gives up when ctx ends or etcd does not answer within RequestTimeout, leaving nothing
// behind in etcd but leases that expire.
func (e *Executor) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return nil
	}
	// The sessions live until Stop, not until ctx (lifecycle cancels Start's ctx on return).
	sess, claims, err := e.register(ctx)
	if err != nil {
		return err
	}
	lctx, lcancel := context.WithCancel(context.Background())
	rnctx, rncancel := context.WithCancel(context.Background())
	e.sess, e.claims, e.started = sess, claims, true
	e.ctx, e.cancel, e.runCtx, e.runCancel = lctx, lcancel, rnctx, rncancel
	assignW, execW := e.watchAssignment(), e.watchExecutors()
	e.loops.Add(3)
	go func() { defer e.loops.Done(); <-lctx.Done(); assignW.Close(); execW.Close() }()
	go func() { defer e.loops.Done(); e.keep(lctx) }()
	go func() { defer e.loops.Done(); e.schedule(lctx) }()
	return nil
}

// Stop stops scheduling and waits for runs in progress to finish, at most StopTimeout and
// until ctx ends, whichever comes first; then it cancels the ctx of the runs still in
// progress. Then it leaves: its session is revoked, so its registration and leadership go at
// once and the leader reassigns its items now. It returns by ctx's deadline whatever etcd
// does: if ctx ends before the revocation is done, they go when the TTL runs out instead.
func (e *Executor) Stop(ctx context.Context) error {
	e.mu.Lock()
	if !e.started {
		e.mu.Unlock()
		return nil
	}
	e.started = false
	cancel, runCancel, sess, claims := e.cancel, e.runCancel, e.sess, e.claims
	e.mu.Unlock()
	cancel() // the loops end, and their etcd requests with them
	var errs []error
	if err := e.waitRuns(ctx); err != nil {
		errs = append(errs, err)
	}
	runCancel()
	if err := e.revoke(ctx, sess); err != nil {
		errs = append(errs, fmt.Errorf("job: could not revoke the session, so the registration and leadership go only when its TTL (%v) runs out: %w", e.cfg.TTL, kvwatch.Err(ctx, err)))
	}
	claims.orphan() // claims outlive us, for the next owner's misfire check
	return errors.Join(errs...)
}

// waitRuns waits, once the loops are cancelled, for them and for the runs in progress to
// end, at most StopTimeout and until ctx ends; it says which cut the wait short.
func (e *Executor) waitRuns(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		e.loops.Wait() // no run starts after the loops ended
		e.runs.Wait()
		close(done)
	}()
	t := time.NewTimer(e.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("job: runs still in progress after StopTimeout (%v); their ctx is cancelled", e.cfg.StopTimeout)
	case <-ctx.Done():
		return fmt.Errorf("job: runs still in progress when Stop's ctx ended; their ctx is cancelled: %w", ctx.Err())
	}
}

// drains are the drains now and a channel closed at their next change (nil, which never
// closes, without Drains).
func (e *Executor) drains() (deploy.Drain, <-chan struct{}) {
	if e.cfg.Drains == nil {
		return deploy.Drain{}, nil
	}
	return e.cfg.Drains.Drained()
}

// drained reports whether color c is drained now.
func (e *Executor) drained(c deploy.Color) bool {
	d, _ := e.drains()
	return d.Of(c)
}

// request is ctx capped by RequestTimeout, for one etcd request.
func (e *Executor) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.cfg.RequestTimeout)
}

// failed says what failed and why: etcd not answering within RequestTimeout, ctx ending, or
// etcd's own error.
func (e *Executor) failed(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("job: %s: gave up when the caller's ctx ended: %w", what, ctx.Err())
	}
	err = kvwatch.Err(ctx, err) // etcd not answering is ErrEtcdUnavailable, as in registry and traffic
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("job: %s: no answer within Config.RequestTimeout (%v): %w", what, e.cfg.RequestTimeout, err)
	}
	return fmt.Errorf("job: %s: %w", what, err)
}
