package job_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/job"
	"github.com/switchyard-go/switchyard/registry"
)

// held holds the runs of a test in progress: each run blocks until its ctx ends or the test
// frees it.
type held struct {
	mu       sync.Mutex // guards the fields below
	ctxs     []context.Context
	returned int // runs whose handler returned
	alive    int // of those, runs whose ctx had not ended when they returned
	release  chan struct{}
	once     sync.Once
}

// holdRuns makes every run of v's executors block until its ctx ends or h.free. Call it
// before starting executors, and register h.free with t.Cleanup after starting them, so the
// runs are freed before the executors stop at cleanup.
func holdRuns(v *env) *held {
	h := &held{release: make(chan struct{})}
	v.hold = func(ctx context.Context, _ string, _ int) {
		h.mu.Lock()
		h.ctxs = append(h.ctxs, ctx)
		h.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-h.release:
		}
		h.mu.Lock()
		h.returned++
		if ctx.Err() == nil {
			h.alive++
		}
		h.mu.Unlock()
	}
	return h
}

// runHeld starts executors ids with session TTL ttl, holding their runs (holdRuns), and
// returns once the leader assigned the items to them and every item of the next trigger is
// running. The runs are freed at cleanup, before the executors stop.
func runHeld(v *env, ttl time.Duration, ids ...string) *held {
	v.t.Helper()
	h := holdRuns(v)
	v.startAll(ttl, ids...)
	v.t.Cleanup(h.free)
	v.assigned(ids...)
	v.trigger()
	testutil.Eventually(v.t, "every item of the trigger running", func() bool { return h.started() == items })
	return h
}

func (h *held) free() { h.once.Do(func() { close(h.release) }) }

func (h *held) started() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ctxs)
}

// allCancelled fails the test unless the ctx of every run of the trigger (items of them) has
// ended: called when Stop returned.
func (h *held) allCancelled(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ctx := range h.ctxs {
		if ctx.Err() != nil {
			n++
		}
	}
	if n != items {
		t.Fatalf("when Stop returned, %d of the %d runs in progress had their ctx cancelled; want all", n, items)
	}
}

// stopAll stops the executors ids at once, each with a ctx of d, and returns what each Stop
// returned and how long it took. A Stop that has not returned after testutil.Deadline fails
// the test: it waits for something that is not coming (etcd, while the test keeps it away).
func (v *env) stopAll(d time.Duration, ids ...string) (map[string]error, map[string]time.Duration) {
	v.t.Helper()
	type result struct {
		id   string
		err  error
		took time.Duration
	}
	ch := make(chan result, len(ids))
	for _, id := range ids {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			begin := time.Now()
			err := v.execs[id].Stop(ctx)
			ch <- result{id, err, time.Since(begin)}
		}()
	}
	errs, took := map[string]error{}, map[string]time.Duration{}
	guard := time.NewTimer(testutil.Deadline)
	defer guard.Stop()
	for range ids {
		select {
		case r := <-ch:
			errs[r.id], took[r.id] = r.err, r.took
			v.live--
		case <-guard.C:
			v.t.Fatalf("Stop with a %v ctx had not returned after %v (returned: %v)", d, testutil.Deadline, took)
		}
	}
	return errs, took
}

// During an etcd outage, Stop returns by its ctx's deadline, cancelling the ctx of the runs
// still in progress then, instead of waiting for etcd to come back.
func TestStopDuringAnEtcdOutageReturnsByItsDeadline(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	ids := []string{"green-1", "green-2"}
	// Their leases outlive the test: a Stop that waits for a lease to expire never returns.
	h := runHeld(v, 2*testutil.Deadline, ids...)

	// The outage lasts until both Stops returned: a Stop that waits for etcd never returns.
	v.e.Cut()
	t.Cleanup(v.e.Heal)
	errs, took := v.stopAll(2*time.Second, ids...)
	v.e.Heal()
	t.Logf("Stop with a 2 s ctx while etcd was cut off took %v", took)
	for id, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "cancelled") {
			t.Errorf("Stop of %s returned %v; want an error saying runs in progress were cancelled", id, err)
		}
	}
	h.allCancelled(t)
}

// Stop waits for runs in progress (at most StopTimeout), then cancels their ctx.
func TestStopTimeoutCancelsTheRunsInProgress(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	v.tweak = func(c *job.Config) { c.StopTimeout = 300 * time.Millisecond }
	h := runHeld(v, long, "green-1")
	errs, _ := v.stopAll(time.Minute, "green-1")
	if err := errs["green-1"]; err == nil || !strings.Contains(err.Error(), "StopTimeout") {
		t.Errorf("Stop returned %v; want an error saying StopTimeout passed", err)
	}
	h.allCancelled(t)
}

// Runs in progress that finish in time finish with their ctx alive, and Stop waits for them.
func TestStopWaitsForTheRunsInProgress(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	h := runHeld(v, long, "green-1")
	stopped := make(chan error, 1)
	go func() { stopped <- v.execs["green-1"].Stop(context.Background()) }()
	h.free()
	if err := testutil.Receive(t, "Stop to return", stopped); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	v.live--
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.returned != items || h.alive != items {
		t.Fatalf("when Stop returned, %d of %d runs had returned, %d with their ctx alive; want all", h.returned, items, h.alive)
	}
}

// Start during an etcd outage gives up by its ctx's deadline, or after RequestTimeout.
func TestStartDuringAnEtcdOutageReturnsByItsDeadline(t *testing.T) {
	t.Parallel()
	v := newEnv(t)
	newExecutor := func(requestTimeout time.Duration) *job.Executor {
		ex, err := job.NewExecutor(job.Config{Client: v.cli, ID: "green-1", Logger: testutil.Logger(t), Clock: v.clk,
			RequestTimeout: requestTimeout,
			Job:            job.Job{Name: "settle", Every: every, Items: items, Handler: func(context.Context, int) error { return nil }}})
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	v.e.Cut() // the outage lasts until Start returned
	t.Cleanup(v.e.Heal)
	start := func(ex *job.Executor, ctx context.Context) error {
		started := make(chan error, 1)
		go func() { started <- ex.Start(ctx) }()
		err := testutil.Receive(t, "Start to return while etcd is cut off", started)
		if err == nil {
			_ = ex.Stop(context.Background())
			t.Fatal("Start succeeded while etcd was cut off")
		}
		t.Logf("Start: %v", err)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start(newExecutor(0), ctx)
	if err := start(newExecutor(300*time.Millisecond), context.Background()); !strings.Contains(err.Error(), "RequestTimeout") || !errors.Is(err, registry.ErrEtcdUnavailable) {
		t.Errorf("Start returned %q; want it to name RequestTimeout and be an ErrEtcdUnavailable, as registry's and traffic's are", err)
	}
	v.e.Heal()
	if n := len(v.registered()); n != 0 {
		t.Fatalf("%d executors registered after a failed Start", n)
	}
}
