package registry_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// chainLog is an OnStateChange that checks, as the changes arrive, that each one starts
// where the one before it ended (From == the previous To): changes delivered out of order
// break the chain.
type chainLog struct {
	mu     sync.Mutex
	last   registry.StateChange
	n      int
	broken []string // the first few breaks, "a->b then c->d"
}

func (c *chainLog) add(sc registry.StateChange) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n > 0 && sc.From != c.last.To && len(c.broken) < 5 {
		c.broken = append(c.broken, fmt.Sprintf("%v->%v then %v->%v", c.last.From, c.last.To, sc.From, sc.To))
	}
	c.last = sc
	c.n++
}

func (c *chainLog) lastTo() (registry.State, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last.To, c.n
}

// slowSink is a slog handler that takes 20 ms per warning, as a logger whose warnings also
// go to a slow sink (a pipe, an alert hook) does: code that logs between changing its state
// and publishing the change lets a later change overtake a lost registration.
type slowSink struct{}

func (slowSink) Enabled(context.Context, slog.Level) bool { return true }
func (slowSink) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		time.Sleep(20 * time.Millisecond) // the sink's latency, not a wait for another goroutine
	}
	return nil
}
func (s slowSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s slowSink) WithGroup(string) slog.Handler      { return s }

// Issue 13 item 7: Update, Deregister and Register hammered while the lease is revoked under
// the Registrar again and again. Every state change must reach OnStateChange in order, and
// once things settle the last change delivered must be the Registrar's state.
func TestStateChangesArriveInOrderUnderLeaseLoss(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli, direct := e.Client(t), e.DirectClient(t)
	log := &chainLog{}
	r := register(t, cli, "order", "o-1", "127.0.0.1:9001", func(c *registry.Config) {
		c.OnStateChange = log.add
		c.Logger = slog.New(slowSink{})
	})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var updates, toggles atomic.Int64
	hammer := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				f()
				// Pacing, so that an Update that has nothing to write (while deregistered)
				// does not spin: the hammer should load etcd, not the test's CPU.
				time.Sleep(time.Millisecond)
			}
		}()
	}
	hammer(func() {
		n := updates.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.Update(ctx, func(in *registry.Record) { in.Weight = float64(1 + n%100) })
		cancel()
	})
	hammer(func() {
		toggles.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = r.Deregister(ctx)
		_ = r.Register(ctx)
		cancel()
	})
	// Lease loss: revoke whatever lease holds the record, as soon as there is one again.
	const revokes = 15
	for k := 0; k < revokes; k++ {
		var lease clientv3.LeaseID
		testutil.Eventually(t, fmt.Sprintf("a leased record to revoke (round %d)", k), func() bool {
			var ok bool
			_, lease, ok = storedRecord(t, direct, r.Key())
			return ok && lease != 0
		})
		if _, err := direct.Revoke(context.Background(), lease); err != nil {
			t.Logf("revoke %x: %v", lease, err) // already gone: the next round finds the new one
		}
	}
	close(stop)
	wg.Wait()

	if err := r.Register(context.Background()); err != nil {
		t.Logf("final Register: %v (the Registrar goes on by itself)", err)
	}
	testutil.Eventually(t, "the Registrar to settle registered with that as its last change delivered", func() bool {
		last, _ := log.lastTo()
		_, _, ok := storedRecord(t, direct, r.Key())
		return ok && r.State() == registry.StateRegistered && last == registry.StateRegistered
	})
	_, n := log.lastTo()
	log.mu.Lock()
	broken := log.broken
	log.mu.Unlock()
	t.Logf("%d state changes, %d updates, %d deregister/register pairs, %d revokes", n, updates.Load(), toggles.Load(), revokes)
	if len(broken) > 0 {
		t.Fatalf("state changes delivered out of order: %v", broken)
	}
}

// Update calls its func outside the Registrar's locks (as the Registrar's doc says of user
// code): the func may call the Registrar.
func TestUpdateCallsItsFuncOutsideTheLock(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	r := register(t, cli, "order", "o-1", "127.0.0.1:9001")
	inner := make(chan error, 1)
	calls := 0
	err := r.Update(context.Background(), func(in *registry.Record) {
		calls++
		if calls == 1 {
			go func() {
				inner <- r.Update(context.Background(), func(in *registry.Record) { in.Metadata = map[string]string{"zone": "b"} })
			}()
			tm := time.NewTimer(testutil.Deadline)
			defer tm.Stop()
			select {
			case err := <-inner:
				inner <- err
			case <-tm.C:
				t.Errorf("an Update called from another Update's func waited %v: the func runs under the Registrar's lock", testutil.Deadline)
			}
		}
		in.Weight = 50
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.Receive(t, "the inner Update", inner); err != nil {
		t.Fatal(err)
	}
	// The outer func saw the record before the inner Update: it runs again on the new one,
	// so neither change is lost.
	if got := r.Record(); got.Weight != 50 || got.Metadata["zone"] != "b" {
		t.Fatalf("record after both Updates: weight %v metadata %v; want 50 and zone b", got.Weight, got.Metadata)
	}
}
