package balancer_test

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

const roundRobin = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// loopResult is what loop's callers saw, once counted is set: answers per instance, their
// latencies, and the calls that succeeded and failed.
type loopResult struct {
	mu      sync.Mutex
	seen    map[string]int
	failed  atomic.Int64
	ok      atomic.Int64
	lat     []time.Duration
	counted atomic.Bool
}

// loop runs `callers` closed-loop callers on c until stop is closed; each call has no retry
// (no WaitForReady, no retry policy).
func loop(c greeterpb.GreeterClient, callers int, stop <-chan struct{}, res *loopResult) *sync.WaitGroup {
	res.seen = map[string]int{}
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				t0 := time.Now()
				resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{})
				d := time.Since(t0)
				cancel()
				if !res.counted.Load() {
					continue
				}
				if err != nil {
					res.failed.Add(1)
					continue
				}
				res.ok.Add(1)
				res.mu.Lock()
				res.seen[resp.GetInstance()]++
				res.lat = append(res.lat, d)
				res.mu.Unlock()
			}
		}()
	}
	return &wg
}

// TestSlowInstanceGetsLittle: four instances of equal weight answer in 2 ms, under 16 callers; one of them is
// made 10× slower. Over the calls that follow, it must receive well under a third of its
// weight share (25 %): picks of two by weight take the one with fewer requests outstanding.
// round_robin, on the same servers in the same run, keeps sending it a quarter.
func TestSlowInstanceGetsLittle(t *testing.T) {
	c := newCluster(t)
	var ins []*instance
	for i := range 4 {
		in := c.start(registry.Record{ID: fmt.Sprintf("s-%d", i)})
		in.delay.Store(int64(2 * time.Millisecond)) // well above the calls' CPU time on 2 cores
		ins = append(ins, in)
	}
	clients := map[string]greeterpb.GreeterClient{
		"switchyard_weighted": c.dialWith(),
		"round_robin":         c.dialWith(func(rc *registry.ResolverConfig) { rc.ServiceConfig = roundRobin }),
	}
	for _, cl := range clients {
		calls(t, cl, context.Background(), 200, 4) // all connected
	}
	ins[0].delay.Store(int64(20 * time.Millisecond)) // the event
	shares := map[string]float64{}
	for _, policy := range []string{"switchyard_weighted", "round_robin"} {
		start := time.Now()
		seen := calls(t, clients[policy], context.Background(), 1500, 16)
		took := time.Since(start)
		shares[policy] = float64(seen["s-0"]) / 1500
		t.Logf("%s: the 10× slower instance got %d of the 1,500 calls after the slowdown (%.1f %%, weight share 25 %%), in %v",
			policy, seen["s-0"], 100*shares[policy], took.Round(time.Millisecond))
		if policy == "switchyard_weighted" && took > time.Second {
			t.Errorf("%s: 1,500 calls took %v, want them within a second of the slowdown", policy, took)
		}
	}
	if s := shares["switchyard_weighted"]; s >= 0.25/3 {
		t.Errorf("switchyard_weighted: the 10× slower instance got %.1f %% of the calls after the slowdown, want < %.1f %% (a third of its weight share)", 100*s, 100*0.25/3)
	}
}

// TestKillLosesNoMoreThanRoundRobin: 16 closed-loop callers per policy, both policies on the
// same four servers at once, no retry; one server is stopped hard (its calls in flight are
// cut). The calls that fail must be no more for switchyard_weighted than for round_robin
// (+2 of slack: a cut call is a matter of a few in flight).
func TestKillLosesNoMoreThanRoundRobin(t *testing.T) {
	c := newCluster(t)
	var ins []*instance
	for i := range 4 {
		in := c.start(registry.Record{ID: fmt.Sprintf("k-%d", i)})
		in.delay.Store(int64(2 * time.Millisecond))
		ins = append(ins, in)
	}
	policies := []string{"switchyard_weighted", "round_robin"}
	clients := map[string]greeterpb.GreeterClient{
		"switchyard_weighted": c.dialWith(),
		"round_robin":         c.dialWith(func(rc *registry.ResolverConfig) { rc.ServiceConfig = roundRobin }),
	}
	for _, cl := range clients {
		calls(t, cl, context.Background(), 200, 4)
	}
	stop := make(chan struct{})
	res := map[string]*loopResult{}
	var wgs []*sync.WaitGroup
	for _, p := range policies {
		res[p] = &loopResult{}
		wgs = append(wgs, loop(clients[p], 16, stop, res[p]))
	}
	// Wait until the victim holds calls of both clients, then count and kill.
	for _, r := range res {
		r.counted.Store(true)
	}
	waitFor(t, "calls in flight on k-0", func() bool { return ins[0].inflight.Load() >= 8 })
	ins[0].srv.Stop()
	// Run on until each policy has made 500 good calls after the kill.
	waitFor(t, "500 calls after the kill on each policy", func() bool {
		return res[policies[0]].ok.Load() >= 500 && res[policies[1]].ok.Load() >= 500
	})
	close(stop)
	for _, wg := range wgs {
		wg.Wait()
	}
	ours, rr := res["switchyard_weighted"].failed.Load(), res["round_robin"].failed.Load()
	t.Logf("calls failed by the kill: switchyard_weighted %d, round_robin %d", ours, rr)
	if ours > rr+2 {
		t.Errorf("switchyard_weighted lost %d calls to the kill, round_robin %d: want no more than round_robin's + 2", ours, rr)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

var cold = flag.Bool("balancer.cold", false, "run TestColdInstance: a cold instance's cost to the release window, against round_robin (a few seconds per policy)")

// TestColdInstance (behind -balancer.cold): 16 closed-loop callers on 3 instances answering
// in 2 ms; a new one joins, with the default warmup, answering in 30 ms for its first 3 s.
// It reports the window's p99 and throughput against the steady ones, for both policies in
// the same run, and checks switchyard_weighted's: p99 ≤ 1.5× steady, throughput ≥ 0.9×.
//
//	go test -run TestColdInstance -balancer.cold -v ./balancer/
func TestColdInstance(t *testing.T) {
	if !*cold {
		t.Skip("a measurement of several seconds: run with -balancer.cold")
	}
	for _, policy := range []string{"switchyard_weighted", "round_robin"} {
		t.Run(policy, func(t *testing.T) {
			c := newCluster(t)
			for i := range 3 {
				c.start(registry.Record{ID: fmt.Sprintf("old-%d", i)}).delay.Store(int64(2 * time.Millisecond))
			}
			var cl greeterpb.GreeterClient
			if policy == "round_robin" {
				cl = c.dialWith(func(rc *registry.ResolverConfig) { rc.ServiceConfig = roundRobin })
			} else {
				cl = c.dialWith()
			}
			calls(t, cl, context.Background(), 200, 4)
			measure := func(d time.Duration) (p99 time.Duration, perSec float64, seen map[string]int) {
				stop := make(chan struct{})
				r := &loopResult{}
				r.counted.Store(true)
				wg := loop(cl, 16, stop, r)
				time.Sleep(d)
				close(stop)
				wg.Wait()
				if n := r.failed.Load(); n > 0 {
					t.Errorf("%d calls failed", n)
				}
				slices.Sort(r.lat)
				return r.lat[len(r.lat)*99/100], float64(len(r.lat)) / d.Seconds(), r.seen
			}
			steadyP99, steadyRate, _ := measure(2 * time.Second)
			in := c.start(registry.Record{ID: "new", StartTime: time.Now(), Warmup: 30 * time.Second})
			in.delay.Store(int64(30 * time.Millisecond))
			warm := time.AfterFunc(3*time.Second, func() { in.delay.Store(int64(2 * time.Millisecond)) })
			defer warm.Stop()
			// The window: from registration until the instance is warm (3 s).
			p99, rate, seen := measure(3 * time.Second)
			t.Logf("%s: steady p99 %v, %.0f calls/s; window (cold instance, first 3 s) p99 %v (%.2f×), %.0f calls/s (%.2f×); the new instance got %d calls",
				policy, steadyP99.Round(10*time.Microsecond), steadyRate, p99.Round(10*time.Microsecond), float64(p99)/float64(steadyP99),
				rate, rate/steadyRate, seen["new"])
			if policy == "switchyard_weighted" {
				if float64(p99) > 1.5*float64(steadyP99) {
					t.Errorf("window p99 %v > 1.5× steady %v", p99, steadyP99)
				}
				if rate < 0.9*steadyRate {
					t.Errorf("window throughput %.0f/s < 0.9× steady %.0f/s", rate, steadyRate)
				}
			}
		})
	}
}
