package balancer

import (
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
)

// allocated returns the allocations and bytes f makes per run, averaged over runs.
func allocated(runs int, f func()) (allocs, bytes float64) {
	var before, after runtime.MemStats
	f() // warm
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / float64(runs), float64(after.TotalAlloc-before.TotalAlloc) / float64(runs)
}

// connected is a policy with n READY endpoints over fake SubConns (rebuild_bench_test.go).
func connected(t *testing.T, policy string, state resolver.State) (*fakeCC, balancer.Balancer) {
	t.Helper()
	cc := &fakeCC{}
	bal := buildPolicy(policy, cc)
	t.Cleanup(bal.Close)
	if err := bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: state}); err != nil {
		t.Fatal(err)
	}
	for _, sc := range cc.subConns {
		sc.ready()
	}
	if cc.state != connectivity.Ready {
		t.Fatalf("%s: state %v after every SubConn is READY", policy, cc.state)
	}
	return cc, bal
}

// TestUpdateCostsNoMoreThanRoundRobin: a resolver update that changes one record among 1,000
// READY endpoints, and the connect storm of 300 endpoints, allocate no more (count and bytes)
// than grpc's round_robin does for the same. Allocation counts do not depend on the machine's
// load, unlike times (BenchmarkRebuildOneChange and BenchmarkConnectStorm give those).
func TestUpdateCostsNoMoreThanRoundRobin(t *testing.T) {
	const n = 1000
	states := [2]resolver.State{benchState(n, 0), benchState(n, n/2)}
	var allocs, bytes [2]float64
	for pi, policy := range policies {
		cc, bal := connected(t, policy, states[0])
		i := 0
		allocs[pi], bytes[pi] = allocated(20, func() {
			i++
			before := cc.pickers
			if err := bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: states[i%2]}); err != nil {
				t.Fatal(err)
			}
			if cc.pickers == before {
				t.Fatalf("%s: no new picker after the update", policy)
			}
		})
	}
	t.Logf("one changed record at %d endpoints: round_robin %.0f allocs %.0f B, %s %.0f allocs %.0f B", n, allocs[0], bytes[0], Name, allocs[1], bytes[1])
	if allocs[1] > allocs[0] || bytes[1] > bytes[0] {
		t.Errorf("one changed record at %d endpoints: %s allocates %.0f times, %.0f B; round_robin %.0f times, %.0f B", n, Name, allocs[1], bytes[1], allocs[0], bytes[0])
	}

	const m = 300
	state := benchState(m, 0)
	for pi, policy := range policies {
		allocs[pi], bytes[pi] = allocated(2, func() {
			cc := &fakeCC{}
			bal := buildPolicy(policy, cc)
			defer bal.Close()
			if err := bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: state}); err != nil {
				t.Fatal(err)
			}
			for _, sc := range cc.subConns {
				sc.ready()
			}
			if cc.state != connectivity.Ready || cc.pickers < m {
				t.Fatalf("%s: state %v after %d pickers, want READY after at least %d", policy, cc.state, cc.pickers, m)
			}
		})
	}
	t.Logf("connect storm of %d endpoints: round_robin %.0f allocs %.0f B, %s %.0f allocs %.0f B", m, allocs[0], bytes[0], Name, allocs[1], bytes[1])
	if allocs[1] > allocs[0] || bytes[1] > bytes[0] {
		t.Errorf("connect storm of %d endpoints: %s allocates %.0f times, %.0f B; round_robin %.0f times, %.0f B", m, Name, allocs[1], bytes[1], allocs[0], bytes[0])
	}
}

// TestPickCostDoesNotGrowWithEndpoints: the pick's search takes about as long at 10,000
// endpoints as at 10 (a binary search took 4 to 5 times as long). Timed, so it compares the
// best of several interleaved rounds, and is skipped with -short and under the race detector.
func TestPickCostDoesNotGrowWithEndpoints(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("timed; see BenchmarkPick")
	}
	sets := map[int]*weightedSet{}
	for _, n := range []int{10, 10_000} {
		s := new(weightedSet)
		for i := range n {
			s.add(fixedPicker{}, nil, nil, float64(1+i%7))
		}
		s.finish()
		sets[n] = s
	}
	best := map[int]float64{}
	for range 9 {
		for _, n := range []int{10, 10_000} {
			s := sets[n]
			const picks = 200_000
			start := time.Now()
			sum := 0
			for k := range uint64(picks) {
				sum += s.index(k)
			}
			ns := float64(time.Since(start).Nanoseconds()) / picks
			sink = sum
			if best[n] == 0 || ns < best[n] {
				best[n] = ns
			}
		}
	}
	t.Logf("index: %.1f ns at 10 endpoints, %.1f ns at 10,000", best[10], best[10_000])
	if best[10_000] > 2.5*best[10] {
		t.Errorf("index takes %.1f ns at 10,000 endpoints, %.1f ns at 10: want at most 2.5×", best[10_000], best[10])
	}
}

var sink int
