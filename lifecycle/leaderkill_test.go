package lifecycle_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
)

// load is callers calling a greeter client continuously, counting failures, until stop.
type load struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	made     atomic.Int64
	failed   atomic.Int64
	mu       sync.Mutex
	firstErr error
	on       sync.Map // instance id → true, for each instance that answered
}

func startLoad(c greeterpb.GreeterClient, callers int) *load {
	l := &load{stop: make(chan struct{})}
	for range callers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				id, err := call(c, false)
				l.made.Add(1)
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if l.firstErr == nil {
						l.firstErr = err
					}
					l.mu.Unlock()
					continue
				}
				l.on.Store(id, true)
			}
		}()
	}
	return l
}

// end stops the callers and waits for them.
func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// answered reports whether instance id answered a call.
func (l *load) answered(id string) bool { _, ok := l.on.Load(id); return ok }

// leaderKill is what one drain right after a leader kill took, from the kill.
type leaderKill struct {
	answer  answer
	status  lifecycle.Status
	took    time.Duration // until POST /offline answered
	gone    time.Duration // until a watch saw the record deleted
	leader  int           // the member killed
	failed  int64         // calls that failed, of made
	made    int64
	callErr error // the first failed call's error
}

// drainAfterLeaderKill registers instances id and other, each with a client of its own given
// every member, runs 16 callers through a consumer until both answered, kills the cluster's
// leader and at once sends POST /offline to id. It returns when /offline answered and the
// record's deletion was seen, with the callers run for another 200 ms.
func drainAfterLeaderKill(t testing.TB, c *etcdtest.Cluster, id, other string) leaderKill {
	t.Helper()
	mod := func(cfg *lifecycle.Config) {
		cfg.TTL = 5 * time.Second
		cfg.RequestTimeout = 0 // the default, 5 s, as a service's main has it
	}
	inst, _ := start(t, c.Client(t), id, mod)
	start(t, c.Client(t), other, mod)
	consumer := c.Client(t)
	l := startLoad(dial(t, consumer), 16)
	testutil.Eventually(t, "both instances to answer calls", func() bool { return l.answered(id) && l.answered(other) })

	key := deploy.InstanceKey(deploy.DefaultPrefix, "greeter", id)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	deleted := make(chan time.Time, 1)
	watcher := c.Client(t)
	resp, err := watcher.Get(wctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record of %s before the kill: %v %v", id, resp, err)
	}
	wch := watcher.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1), clientv3.WithFilterPut())
	go func() {
		for r := range wch {
			if len(r.Events) > 0 {
				deleted <- time.Now()
				return
			}
		}
	}()

	lk := leaderKill{leader: c.WaitLeader(t)}
	c.Stop(lk.leader)
	killed := time.Now()
	lk.answer = post(t, inst, "/offline")
	lk.took = time.Since(killed)
	lk.status = statusOf(t, lk.answer)
	lk.gone = testutil.Receive(t, "the watch to see the record deleted", deleted).Sub(killed)
	// Calls under way at the drain's end and just after it must not fail either.
	since := l.made.Load()
	testutil.Eventually(t, "the callers to make 200 more calls", func() bool { return l.made.Load() >= since+200 })
	l.end()
	lk.made, lk.failed, lk.callErr = l.made.Load(), l.failed.Load(), l.firstErr
	return lk
}

// Issue 19 item 1: the leader of a 3-member etcd cluster is killed right before POST
// /offline, with 16 callers calling through a consumer: no call fails, /offline answers 200
// with the deregistration done well within RequestTimeout (the old drain sent one Delete,
// which a surviving member forwarded to the dead leader, and waited out its 5 s), and the
// record is gone about as soon as a new leader is elected.
func TestDrainAfterALeaderKill(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	lk := drainAfterLeaderKill(t, c, "a", "b")
	t.Logf("leader m%d killed: /offline answered %d after %v, record deleted after %v; %d of %d calls failed; status %s",
		lk.leader, lk.answer.code, lk.took.Round(time.Millisecond), lk.gone.Round(time.Millisecond), lk.failed, lk.made, lk.answer.body)
	if lk.failed > 0 {
		t.Errorf("%d of %d calls failed around the leader kill and the drain; the first: %v", lk.failed, lk.made, lk.callErr)
	}
	if lk.status.State != lifecycle.StateDrained || lk.status.Deregistration != "done" {
		t.Errorf("/offline after the leader kill answered state %q, deregistration %q (%s); want drained, done",
			lk.status.State, lk.status.Deregistration, lk.status.RegistryError)
	}
	// The goal is 1 s (BenchmarkDrainAfterLeaderKill measures it); half of RequestTimeout is
	// margin for a loaded machine, and still tells a drain that waited out a 5 s attempt.
	if bound := registryRequestTimeout / 2; lk.took > bound || lk.gone > bound {
		t.Errorf("after a leader kill /offline answered after %v and the record was deleted after %v; want both within %v (RequestTimeout is %v)",
			lk.took.Round(time.Millisecond), lk.gone.Round(time.Millisecond), bound, registryRequestTimeout)
	}
}

// registryRequestTimeout is lifecycle's default RequestTimeout.
const registryRequestTimeout = 5 * time.Second

// BenchmarkDrainAfterLeaderKill measures drains right after the etcd leader is killed (as
// TestDrainAfterALeaderKill does), one per iteration, on one 3-member cluster whose killed
// member is restarted after each: the time from the kill until POST /offline answers and
// until a watch sees the record deleted, median and worst. Run it with -benchtime=10x.
func BenchmarkDrainAfterLeaderKill(b *testing.B) {
	c := etcdtest.StartCluster(b, 3)
	var took, gone []time.Duration
	for k := 0; b.Loop(); k++ {
		lk := drainAfterLeaderKill(b, c, fmt.Sprint("a", k), fmt.Sprint("b", k))
		if lk.failed > 0 || lk.status.Deregistration != "done" {
			b.Errorf("run %d: %d of %d calls failed (%v); /offline answered %d %s", k, lk.failed, lk.made, lk.callErr, lk.answer.code, lk.answer.body)
		}
		took, gone = append(took, lk.took), append(gone, lk.gone)
		b.StopTimer()
		if err := c.Restart(lk.leader); err != nil {
			b.Fatal(err)
		}
		c.WaitLeader(b)
		b.StartTimer()
	}
	slices.Sort(took)
	slices.Sort(gone)
	n := len(took)
	b.Logf("%d drains after a leader kill: /offline answered after %v; record deleted after %v", n, took, gone)
	b.ReportMetric(took[n/2].Seconds()*1000, "ms-offline-median")
	b.ReportMetric(took[n-1].Seconds()*1000, "ms-offline-worst")
	b.ReportMetric(gone[n/2].Seconds()*1000, "ms-deleted-median")
	b.ReportMetric(gone[n-1].Seconds()*1000, "ms-deleted-worst")
	b.ReportMetric(0, "ns/op")
}
