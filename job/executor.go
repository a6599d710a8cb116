package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/robfig/cron/v3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/backoff"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
	"github.com/switchyard-go/switchyard/internal/record"
)

// claimTTL is how long run claims live: long enough that a new owner checking a missed
// trigger still sees that the old owner ran it.
const claimTTL = 120

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
// Locking: mu guards the fields below it; it is never held while a handler runs or across an
// etcd request.
type Executor struct {
	cfg   Config
	sched cron.Schedule
	keys  struct{ exec, election, assignment, runs, executors string }
	log   *slog.Logger
	runs  sync.WaitGroup
	nRun  atomic.Int64
	color deploy.Color  // the Drains' color, fixed
	kick  chan struct{} // wakes the leader: the executors or the assignment changed
	// recheck is how often the leader checks the assignment with nothing to wake it.
	recheck time.Duration

	mu        sync.Mutex
	started   bool
	ctx       context.Context // the loops'; ends when Stop begins
	cancel    context.CancelFunc
	runCtx    context.Context // the runs'; ends at Stop's deadline
	runCancel context.CancelFunc
	loops     sync.WaitGroup
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
	p := deploy.JobPrefix(cfg.Prefix, cfg.Job.Name)
	e.keys.executors = p + "executors/"
	e.keys.exec = e.keys.executors + cfg.ID
	e.keys.election = p + "leader"
	e.keys.assignment = p + "assignment"
	e.keys.runs = p + "runs/"
	return e, nil
}

// kickLeader wakes the leader's loop, if this executor leads, to check the assignment.
func (e *Executor) kickLeader() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Runs counts the runs this executor started.
func (e *Executor) Runs() int64 { return e.nRun.Load() }

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

func (e *Executor) record() string {
	val, _ := json.Marshal(executorRecord{Header: record.Header{V: schemaVersion}, ID: e.cfg.ID, Color: string(e.color)})
	return string(val)
}

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
	sess, err := e.grant(ctx, e.cfg.TTL)
	if err != nil {
		return e.failed(ctx, "grant the session lease", err)
	}
	claims, err := e.grant(ctx, claimTTL*time.Second)
	if err != nil {
		_ = e.revoke(ctx, sess)
		return e.failed(ctx, "grant the claims lease", err)
	}
	rctx, cancel := e.request(ctx)
	_, err = e.cfg.Client.Put(rctx, e.keys.exec, e.record(), clientv3.WithLease(sess.id))
	cancel()
	if err != nil {
		_ = e.revoke(ctx, sess)
		_ = e.revoke(ctx, claims)
		return e.failed(ctx, "register executor", err)
	}
	lctx, lcancel := context.WithCancel(context.Background())
	rnctx, rncancel := context.WithCancel(context.Background())
	e.sess, e.claims, e.started = sess, claims, true
	e.ctx, e.cancel, e.runCtx, e.runCancel = lctx, lcancel, rnctx, rncancel
	assignW := kvwatch.New(kvwatch.Config[assignment]{
		Client: e.cfg.Client, Prefix: e.keys.assignment, Decode: func(name string, val []byte) (assignment, error) { return decodeAssignment(name, val, e.cfg.Job.Items) },
		// Every write is news, even of the same bytes (a leader that took over with a stale
		// view rewrites what its predecessor wrote): claims check the revision, so a view
		// left at the old one would have every claim refused from then on.
		Equal: func(a, b assignment) bool { return false }, PerEvent: true,
		OnChange: e.onAssignment, RequestTimeout: e.cfg.RequestTimeout, Logger: e.log,
		OnSkip: func(key string, err error) {
			e.log.Warn("job: ignoring the assignment", "key", key, "err", err)
			if key == e.keys.assignment {
				e.mu.Lock()
				e.assignBad = true
				e.mu.Unlock()
				e.kickLeader() // the leader writes its own again
			}
		},
	})
	execW := kvwatch.New(kvwatch.Config[executorRecord]{
		Client: e.cfg.Client, Prefix: e.keys.executors, Decode: decodeExecutor,
		Equal: func(a, b executorRecord) bool { return a == b },
		OnChange: func(ex []executorRecord, _ int64) {
			e.mu.Lock()
			e.execs = ex
			e.mu.Unlock()
			e.kickLeader()
		},
		OnSkip:         func(key string, err error) { e.log.Warn("job: ignoring an executor record", "key", key, "err", err) },
		RequestTimeout: e.cfg.RequestTimeout, Logger: e.log,
	})
	e.loops.Add(3)
	go func() { defer e.loops.Done(); <-lctx.Done(); assignW.Close(); execW.Close() }()
	go func() { defer e.loops.Done(); e.keep(lctx) }()
	go func() { defer e.loops.Done(); e.schedule(lctx) }()
	return nil
}

// keep campaigns with the current session and, when etcd was unreachable for longer than
// the TTL and the session ended, makes a new one (with backoff) and registers again.
func (e *Executor) keep(ctx context.Context) {
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		e.mu.Lock()
		sess := e.sess
		e.mu.Unlock()
		select {
		case <-sess.done:
			if err := e.renew(ctx); err != nil {
				if ctx.Err() == nil {
					e.log.Warn("job: cannot renew the session yet", "err", err)
				}
				sleep(ctx, bo.Next())
				continue
			}
			e.log.Info("job: session renewed; registered again")
			bo.Reset()
			continue
		default:
		}
		if err := e.campaign(ctx, sess); err != nil && ctx.Err() == nil {
			e.log.Warn("job: campaign failed; trying again", "err", err)
			sleep(ctx, bo.Next())
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// renew replaces a lost session (and a lost claims session) and re-registers.
func (e *Executor) renew(ctx context.Context) error {
	e.mu.Lock()
	claims := e.claims
	e.mu.Unlock()
	select {
	case <-claims.done:
		c, err := e.grant(ctx, claimTTL*time.Second)
		if err != nil {
			return e.failed(ctx, "grant the claims lease", err)
		}
		e.mu.Lock()
		e.claims = c
		e.mu.Unlock()
	default:
	}
	sess, err := e.grant(ctx, e.cfg.TTL)
	if err != nil {
		return e.failed(ctx, "grant the session lease", err)
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	if _, err := e.cfg.Client.Put(rctx, e.keys.exec, e.record(), clientv3.WithLease(sess.id)); err != nil {
		sess.orphan() // its lease expires with the TTL
		return e.failed(ctx, "register executor", err)
	}
	e.mu.Lock()
	e.sess = sess
	e.mu.Unlock()
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
	done := make(chan struct{})
	go func() {
		e.loops.Wait() // no run starts after the loops ended
		e.runs.Wait()
		close(done)
	}()
	t := time.NewTimer(e.cfg.StopTimeout)
	defer t.Stop()
	var errs []error
	select {
	case <-done:
	case <-t.C:
		errs = append(errs, fmt.Errorf("job: runs still in progress after StopTimeout (%v); their ctx is cancelled", e.cfg.StopTimeout))
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("job: runs still in progress when Stop's ctx ended; their ctx is cancelled: %w", ctx.Err()))
	}
	runCancel()
	if err := e.revoke(ctx, sess); err != nil {
		errs = append(errs, fmt.Errorf("job: could not revoke the session, so the registration and leadership go only when its TTL (%v) runs out: %w", e.cfg.TTL, kvwatch.Err(ctx, err)))
	}
	claims.orphan() // claims outlive us, for the next owner's misfire check
	return errors.Join(errs...)
}

func (e *Executor) onAssignment(as []assignment, rev int64) {
	var a assignment
	if len(as) > 0 {
		a = as[0]
	}
	e.mu.Lock()
	e.assign, e.assignRv, e.assignBad = a, rev, false
	last, started := e.last, e.started
	items := slices.Clone(a.Items[e.cfg.ID])
	e.mu.Unlock()
	e.kickLeader() // the leader checks it is its own
	// RunOnce: the last trigger may have passed while these items had no owner, or while this
	// executor's view was stale and its claims were refused. Claims make this safe: whatever
	// already ran for that trigger is not run again.
	if started && e.cfg.Job.Misfire == RunOnce && !last.IsZero() && e.cfg.Clock.Since(last) < claimTTL*time.Second/2 {
		for _, it := range items {
			e.tryRun(it, last, rev)
		}
	}
}

// schedule fires at every trigger of the schedule. It steps from trigger to trigger, so a
// wake-up that comes late (a busy machine) still fires the trigger it was for; after a long
// stall (more than maxCatchUp triggers behind) it jumps to the next one to come.
func (e *Executor) schedule(ctx context.Context) {
	const maxCatchUp = 5
	var prev time.Time
	for {
		now := e.cfg.Clock.Now()
		next := e.sched.Next(now)
		if !prev.IsZero() {
			if n := e.sched.Next(prev); n.Before(next) {
				behind, k := n, 0
				for ; behind.Before(now) && k < maxCatchUp; k++ {
					behind = e.sched.Next(behind)
				}
				if k < maxCatchUp {
					next = n
				}
			}
		}
		prev = next
		t := e.cfg.Clock.NewTimer(e.cfg.Clock.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
		// Items, the assignment's revision and the trigger are read together: a claim is only
		// ever made for the items of the assignment whose revision it checks, and onAssignment
		// sees either this trigger or the assignment these items came from, never neither.
		e.mu.Lock()
		e.last = next
		items, rev := slices.Clone(e.assign.Items[e.cfg.ID]), e.assignRv
		e.mu.Unlock()
		for _, it := range items {
			e.tryRun(it, next, rev)
		}
	}
}

// tryRun claims (item, trigger) and runs it if the claim succeeds: the claim is refused if
// someone claimed it already or the assignment changed since revision rev, the one item was
// read from.
func (e *Executor) tryRun(item int, trigger time.Time, rev int64) {
	if e.drained(e.color) {
		return
	}
	e.mu.Lock()
	claims, started, lctx, runCtx := e.claims, e.started, e.ctx, e.runCtx
	e.mu.Unlock()
	if !started || rev == 0 {
		return
	}
	key := e.keys.runs + strconv.Itoa(item) + "/" + strconv.FormatInt(trigger.UnixMilli(), 10)
	ctx, cancel := e.request(lctx)
	resp, err := e.cfg.Client.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		clientv3.Compare(clientv3.ModRevision(e.keys.assignment), "<", rev+1),
	).Then(clientv3.OpPut(key, e.cfg.ID, clientv3.WithLease(claims.id))).Commit()
	cancel()
	if err != nil {
		if lctx.Err() == nil {
			e.log.Warn("job: could not claim a run; skipping it", "item", item, "trigger", trigger, "err", e.failed(lctx, "claim", err))
		}
		return
	}
	if !resp.Succeeded {
		return
	}
	e.nRun.Add(1)
	e.runs.Add(1)
	go func() {
		defer e.runs.Done()
		rctx, cancel := runCtx, context.CancelFunc(func() {})
		if e.cfg.Job.Timeout > 0 {
			rctx, cancel = context.WithTimeout(rctx, e.cfg.Job.Timeout)
		}
		defer cancel()
		if err := e.cfg.Job.Handler(rctx, item); err != nil {
			e.log.Warn("job: run failed", "item", item, "trigger", trigger, "err", err)
		}
	}()
}

// campaign runs for leadership with sess for as long as the executor runs and sess lives;
// as leader, it keeps the assignment right. It returns nil when ctx ends or sess is lost,
// and the error of a failed election request otherwise.
func (e *Executor) campaign(ctx context.Context, sess *session) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // a lost session ends the campaign too
		select {
		case <-sess.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	key, rev, err := e.elect(ctx, sess)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	e.log.Info("job: leading")
	t := time.NewTicker(e.recheck)
	defer t.Stop()
	e.mu.Lock()
	// What is in etcd as far as we know, then what we wrote, and the revision of that.
	written, writtenRv := e.assign, e.assignRv
	e.mu.Unlock()
	for {
		_, drainsChanged := e.drains() // before reassigning, so no change is missed
		e.reassign(ctx, key, rev, &written, &writtenRv)
		select {
		case <-ctx.Done():
			return nil
		case <-sess.done:
			e.log.Warn("job: session lost; no longer leading")
			return nil
		case <-drainsChanged: // a drain changed who may run
		case <-e.kick:
		case <-t.C:
		}
	}
}

// reassign writes the assignment the current executors and drains call for, if it differs
// from the one last written (cur, at revision curRv) or if what etcd holds since is not a
// leader's (deleted, or refused by decodeAssignment), provided that the election key key
// still has create revision rev: this executor still leads.
func (e *Executor) reassign(ctx context.Context, key string, rev int64, cur *assignment, curRv *int64) {
	e.mu.Lock()
	execs := slices.Clone(e.execs)
	seen, seenRv, bad := e.assign, e.assignRv, e.assignBad
	e.mu.Unlock()
	if seen.Version > cur.Version { // another leader wrote since
		*cur, *curRv = seen, seenRv
	}
	// Someone else's write since ours: a deletion, or a value refused (the last good one is
	// then kept, so seen may still look like ours). Executors' claims check the revision of
	// the key, so until a leader writes again nothing runs.
	foreign := bad || (seenRv > *curRv && !sameItems(seen.Items, cur.Items))
	var eligible []string
	for _, x := range execs {
		if !e.drained(deploy.Color(x.Color)) {
			eligible = append(eligible, x.ID)
		}
	}
	slices.Sort(eligible)
	next := assignment{Header: record.Header{V: schemaVersion}, Version: cur.Version + 1, Items: map[string][]int{}}
	for it := 0; it < e.cfg.Job.Items && len(eligible) > 0; it++ {
		id := eligible[it%len(eligible)]
		next.Items[id] = append(next.Items[id], it)
	}
	if !foreign && sameItems(next.Items, cur.Items) {
		return
	}
	val, _ := json.Marshal(next)
	wctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cfg.Client.Txn(wctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpPut(e.keys.assignment, string(val))).Commit()
	if err != nil || !resp.Succeeded {
		if ctx.Err() == nil {
			if err != nil {
				err = e.failed(ctx, "write the assignment", err)
			}
			e.log.Warn("job: assignment not written (leadership lost or etcd unreachable)", "err", err)
		}
		return
	}
	*cur, *curRv = next, resp.Header.Revision
	if foreign {
		e.log.Warn("job: the assignment in etcd was not a leader's; wrote it again", "version", next.Version)
	}
	e.log.Info("job: assigned", "version", next.Version, "executors", eligible)
}

func sameItems(a, b map[string][]int) bool {
	return (len(a) == 0 && len(b) == 0) || reflect.DeepEqual(a, b)
}
