package balancer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

// samplerRig is a balancer on a fake clock holding endpoints (no children, no ClientConn),
// whose loads the test sets and whose sampler it ticks by moving the clock.
type samplerRig struct {
	b     *wBalancer
	clock *clockwork.FakeClock
	ends  []*endpoint
}

func newSamplerRig(n int) *samplerRig {
	r := &samplerRig{clock: clockwork.NewFakeClock()}
	r.b = newBalancer(nil, balancer.BuildOptions{}, r.clock, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for range n {
		e := &endpoint{b: r.b}
		r.ends = append(r.ends, e)
	}
	r.b.list = r.ends
	return r
}

// tick moves the clock by d and waits for the sampler's tick at the new time.
func (r *samplerRig) tick(t *testing.T, d time.Duration) {
	t.Helper()
	r.clock.Advance(d)
	now := r.clock.Now()
	testutil.Eventually(t, "the sampler's tick", func() bool {
		r.b.mu.Lock()
		defer r.b.mu.Unlock()
		return !r.b.smp.last.Before(now)
	})
}

// ticks makes n ticks of sampleEvery; before each, endpoint i answers answered[i] calls.
func (r *samplerRig) ticks(t *testing.T, n int, answered ...int64) {
	t.Helper()
	for range n {
		for i, a := range answered {
			r.ends[i].load.answered.Add(a)
		}
		r.tick(t, sampleEvery)
	}
}

func (r *samplerRig) latency(i int) time.Duration {
	return time.Duration(r.ends[i].load.latencyNs())
}

func (r *samplerRig) stop() {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	r.b.closed = true
	if r.b.smpTimer != nil {
		r.b.smpTimer.Stop()
	}
}

// TestSamplerMeasuresLatencyByLittlesLaw: over a window, latency = (outstanding × time) /
// calls answered, published when the window ends; earlier windows count half as much at each
// window; an endpoint with fewer than minAnswered answered calls carries its window on and
// keeps its last latency; a late tick counts the time it was late; the sampler stops after
// idleTicks idle ticks and a Done starts it again.
func TestSamplerMeasuresLatencyByLittlesLaw(t *testing.T) {
	r := newSamplerRig(3)
	defer r.stop()
	r.ends[0].load.outstanding.Store(4)
	r.ends[1].load.outstanding.Store(1)
	r.ends[2].load.outstanding.Store(2)
	r.ends[0].load.answered.Store(1000) // before the sampler ran: not counted
	r.b.wakeSampler()

	r.ticks(t, 1, 8, 1, 0)
	// Endpoint 0 is new and answered 8: measured at once, 4 × 20 ms / 8.
	if l0, l1, l2 := r.latency(0), r.latency(1), r.latency(2); l0 != 10*time.Millisecond || l1 != 0 || l2 != 0 {
		t.Fatalf("after a tick: latencies %v %v %v, want 10ms none none", l0, l1, l2)
	}
	r.ticks(t, 9, 8, 1, 0)
	// Endpoint 0 over ticks 2 to 10: 4 × 180 ms / 72, with the first (80 ms / 8) at half
	// weight; endpoint 1 answered its 8th at tick 8: 1 × 160 ms / 8 (and 2 since: carried).
	if l0, l1, l2 := r.latency(0), r.latency(1), r.latency(2); l0 != 10*time.Millisecond || l1 != 20*time.Millisecond || l2 != 0 {
		t.Fatalf("after one window: latencies %v %v %v, want 10ms 20ms none", l0, l1, l2)
	}
	// Window 2: endpoint 0 answers twice as fast: (0.5 × 760 + 800) ms / (0.5 × 76 + 160);
	// endpoint 1 answers 5 (7 in its window, too few: it carries on, keeping 20 ms);
	// endpoint 2 answers its 8th at tick 17 (2 × 340 ms / 8 = 85 ms), then 12 by the window's
	// end: (0.5 × 680 + 2 × 60) ms / (0.5 × 8 + 12) = 28.75 ms.
	r.ticks(t, 5, 16, 1, 0)
	r.ticks(t, 5, 16, 0, 4)
	area0 := float64(1180 * time.Millisecond)
	want0 := time.Duration(area0 / 198)
	if l0, l1, l2 := r.latency(0), r.latency(1), r.latency(2); l0 != want0 || l1 != 20*time.Millisecond || l2 != 28750*time.Microsecond {
		t.Fatalf("after two windows: latencies %v %v %v, want %v 20ms 28.75ms", l0, l1, l2, want0)
	}
	// Window 3, its 9th tick 100 ms late (the window ends there: 280 ms): endpoint 1
	// (carried since tick 8: 240 ms of 1 outstanding, then 280 ms) answers 7 + 12 = 19 calls
	// in all: (0.5 × 160 + 520) ms / (0.5 × 8 + 19).
	r.ticks(t, 8, 0, 1, 0)
	r.ends[1].load.answered.Add(4)
	r.tick(t, sampleEvery+100*time.Millisecond)
	area := float64(600 * time.Millisecond)
	if l1, want := r.latency(1), time.Duration(area/23); l1 != want {
		t.Fatalf("endpoint 1 after a late tick: %v, want %v", l1, want)
	}

	// Idle: no call outstanding for idleTicks ticks stops the sampler.
	for _, e := range r.ends {
		e.load.outstanding.Store(0)
	}
	r.ticks(t, idleTicks)
	r.b.mu.Lock()
	stopped := r.b.smpTimer == nil && !r.b.sampling.Load()
	r.b.mu.Unlock()
	if !stopped {
		t.Fatalf("the sampler runs on after %d idle ticks", idleTicks)
	}
	r.b.wakeSampler() // as a Done does
	r.b.mu.Lock()
	running := r.b.smpTimer != nil && r.b.sampling.Load()
	r.b.mu.Unlock()
	if !running {
		t.Fatal("a Done did not start the sampler again")
	}
}

// TestSamplerMeasuresRealCalls: over real gRPC, with 8 callers on an endpoint answering in
// 2 ms and one in 20 ms, the sampler measures the slow one several times slower and at
// least its handler's time, so picks leave it (it gets far less than its half of the calls);
// when the calls stop, the sampler stops; Close leaves no goroutine (goleak).
func TestSamplerMeasuresRealCalls(t *testing.T) {
	delay := func(d time.Duration) grpc.ServerOption {
		return grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			tm := time.NewTimer(d)
			defer tm.Stop()
			<-tm.C // the server's work
			return h(ctx, req)
		})
	}
	fastAddr, _ := testutil.ServeGreeter(t, "fast", delay(2*time.Millisecond))
	slowAddr, _ := testutil.ServeGreeter(t, "slow", delay(20*time.Millisecond))
	var eps []resolver.Endpoint
	for id, addr := range map[string]string{"fast": fastAddr, "slow": slowAddr} {
		eps = append(eps, SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}},
			EndpointInfo{ID: id, Weight: 100, TrafficWeight: 100}))
	}
	rs := manual.NewBuilderWithScheme("samplertest")
	rs.InitialState(resolver.State{Endpoints: eps})
	const target = "samplertest:///greeter"
	cc := testutil.Dial(t, target, grpc.WithResolvers(rs),
		grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, loadTestName)))
	cc.Connect()
	client := greeterpb.NewGreeterClient(cc)
	t.Cleanup(func() { loadTestBalancers.Delete(target) })
	var b *wBalancer
	testutil.Eventually(t, "two READY endpoints", func() bool {
		v, ok := loadTestBalancers.Load(target)
		if !ok {
			return false
		}
		b = v.(*wBalancer)
		_, _, ready := b.loads()
		return ready == 2
	})
	latencies := func() (fast, slow time.Duration) {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.list {
			if e.info.ID == "fast" {
				fast = time.Duration(e.load.latencyNs())
			} else {
				slow = time.Duration(e.load.latencyNs())
			}
		}
		return fast, slow
	}

	stop := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				resp, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
				cancel()
				if err != nil {
					t.Errorf("call: %v", err)
					return
				}
				mu.Lock()
				seen[resp.GetInstance()]++
				mu.Unlock()
			}
		})
	}
	var fast, slow time.Duration
	testutil.Eventually(t, "both endpoints measured, the slow one over twice the fast one", func() bool {
		fast, slow = latencies()
		return fast > 0 && slow > 2*fast
	})
	// From now on the picks know: the calls started after this go mostly to the fast one.
	mu.Lock()
	clear(seen)
	mu.Unlock()
	testutil.Eventually(t, "200 calls after both were measured", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen["fast"]+seen["slow"] >= 200
	})
	close(stop)
	wg.Wait()
	fast, slow = latencies()
	t.Logf("fast %v, slow %v; calls after: %v", fast, slow, seen)
	if slow < 10*time.Millisecond {
		t.Errorf("the slow endpoint (20 ms handler) measured %v", slow)
	}
	if share := float64(seen["slow"]) / float64(seen["fast"]+seen["slow"]); share > 0.3 {
		t.Errorf("the slow endpoint got %.0f %% of the calls once measured, want well under its half", 100*share)
	}
	testutil.Eventually(t, "the sampler to stop when no call is outstanding", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.smpTimer == nil && !b.sampling.Load()
	})
}

// BenchmarkSample: one tick of the sampler over n endpoints, each holding calls (a window
// ends every 10th tick). ns/op × ticks per second (50, fewer above walkPerTick endpoints)
// is the sampler's CPU time per second per ClientConn while calls go on (cpu_µs/s).
func BenchmarkSample(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10_000} {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			r := newSamplerRig(n)
			for i, e := range r.ends {
				e.load.outstanding.Store(int64(1 + i%5))
			}
			now := r.clock.Now()
			r.b.smp = sampler{last: now, start: now}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = now.Add(tickEvery(n))
				if i%windowTicks == 0 {
					for _, e := range r.ends {
						e.load.answered.Add(90)
					}
				}
				r.b.mu.Lock()
				r.b.sampleLocked(now)
				r.b.mu.Unlock()
			}
			b.StopTimer()
			perTick := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(perTick*float64(time.Second/tickEvery(n))/1e3, "cpu_µs/s")
		})
	}
}
