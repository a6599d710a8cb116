package job

import (
	"context"
	"slices"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// claimTTL is how long run claims live: long enough that a new owner checking a missed
// trigger still sees that the old owner ran it.
const claimTTL = 120

// watchAssignment follows the assignment key: onAssignment gets each write, and a value no
// leader writes marks the assignment bad and wakes the leader to write its own again.
func (e *Executor) watchAssignment() *kvwatch.Watcher[assignment] {
	return kvwatch.New(kvwatch.Config[assignment]{
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

// schedule fires at every trigger of the schedule, until ctx ends.
func (e *Executor) schedule(ctx context.Context) {
	var prev time.Time
	for {
		next := e.nextTrigger(prev)
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

// nextTrigger is the trigger to fire after prev (zero: none fired yet). It steps from trigger
// to trigger, so a wake-up that comes late (a busy machine) still fires the trigger it was
// for; after a long stall (more than maxCatchUp triggers behind) it jumps to the next one to
// come.
func (e *Executor) nextTrigger(prev time.Time) time.Time {
	const maxCatchUp = 5
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
	return next
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
	if e.claim(lctx, claims, item, trigger, rev) {
		e.run(runCtx, item, trigger)
	}
}

// claim claims (item, trigger) for this executor on the claims session, in a transaction that
// succeeds only if nobody claimed it and the assignment is still at revision rev or below.
// It reports whether the claim is this executor's; ctx is the loops'.
func (e *Executor) claim(ctx context.Context, claims *session, item int, trigger time.Time, rev int64) bool {
	key := e.keys.runs + strconv.Itoa(item) + "/" + strconv.FormatInt(trigger.UnixMilli(), 10)
	rctx, cancel := e.request(ctx)
	resp, err := e.cfg.Client.Txn(rctx).If(
		clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		clientv3.Compare(clientv3.ModRevision(e.keys.assignment), "<", rev+1),
	).Then(clientv3.OpPut(key, e.cfg.ID, clientv3.WithLease(claims.id))).Commit()
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("job: could not claim a run; skipping it", "item", item, "trigger", trigger, "err", e.failed(ctx, "claim", err))
		}
		return false
	}
	return resp.Succeeded
}

// run runs the handler for item in a goroutine of its own, with ctx (the runs') capped by
// Job.Timeout; Stop waits for it through e.runs.
func (e *Executor) run(ctx context.Context, item int, trigger time.Time) {
	e.nRun.Add(1)
	e.runs.Add(1)
	go func() {
		defer e.runs.Done()
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if e.cfg.Job.Timeout > 0 {
			rctx, cancel = context.WithTimeout(rctx, e.cfg.Job.Timeout)
		}
		defer cancel()
		err := e.cfg.Job.Handler(rctx, item)
		if err != nil {
			e.log.Warn("job: run failed", "item", item, "trigger", trigger, "err", err)
		}
		e.ran(err != nil)
	}()
}

// ran counts a run the handler finished (switchyard.job.runs) and tells the Drains, if they
// are a deploy.Worker.
func (e *Executor) ran(failed bool) {
	i := 0
	if failed {
		i = 1
	}
	e.runsC.Add(context.Background(), 1, e.outcome[i])
	if e.worker != nil {
		e.worker.DidWork(deploy.JobWork, failed)
	}
}
