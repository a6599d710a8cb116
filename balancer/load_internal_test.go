package balancer

import (
	"math"
	"testing"
	"time"
)

// loadSet is a set of equal weights whose endpoints have the given latencies (0: none
// measured) and each one request outstanding, plus a weight-0 endpoint.
func loadSet(lat ...time.Duration) *weightedSet {
	var s weightedSet
	for _, d := range lat {
		l := new(endpointLoad)
		l.n.Store(1)
		l.ewma.Store(math.Float64bits(float64(d)))
		s.add(fixedPicker{}, nil, nil, l, 1)
	}
	l := new(endpointLoad)
	l.ewma.Store(math.Float64bits(float64(time.Microsecond))) // fast, idle, drained
	s.add(fixedPicker{}, nil, nil, l, 0)
	s.finish()
	return &s
}

// TestChooseMovesOnlyFromTheSlow: picks leave an endpoint only when it is more than 2× and
// 1 ms slower than the second candidate; otherwise every endpoint keeps its Fibonacci-window
// share exactly (the canary's accuracy), and no pick goes to a drained endpoint.
func TestChooseMovesOnlyFromTheSlow(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name string
		lat  []time.Duration
		want []float64 // shares of the picks
	}{
		{"healthy: within 2×", []time.Duration{2 * ms, 3 * ms, 3900 * time.Microsecond, 2 * ms}, []float64{0.25, 0.25, 0.25, 0.25}},
		{"healthy: 3× but within 1 ms", []time.Duration{200 * time.Microsecond, 600 * time.Microsecond, 900 * time.Microsecond, 300 * time.Microsecond}, []float64{0.25, 0.25, 0.25, 0.25}},
		{"unmeasured", []time.Duration{20 * ms, 0, 0, 0}, []float64{0.25, 0.25, 0.25, 0.25}},
		// Endpoint 0 keeps a pick only when it is drawn three times (1/4 × 1/4 × 1/4); its
		// others spread by weight over the rest.
		{"one 10× slower", []time.Duration{20 * ms, 2 * ms, 2 * ms, 2 * ms}, []float64{1.0 / 64, 21.0 / 64, 21.0 / 64, 21.0 / 64}},
	} {
		s := loadSet(c.lat...)
		const n = fibPicksInternal
		counts := make([]int, s.len())
		for k := uint64(1); k <= n; k++ {
			counts[s.choose(k)]++
		}
		if counts[len(counts)-1] != 0 {
			t.Errorf("%s: %d picks went to the drained endpoint", c.name, counts[len(counts)-1])
		}
		for i, share := range c.want {
			tol := 2.0
			if c.name == "one 10× slower" {
				tol = 0.01 * n // the second draws are not a Fibonacci window
			}
			if want := n * share; math.Abs(float64(counts[i])-want) >= tol {
				t.Errorf("%s: endpoint %d got %d of %d picks, want %.1f ±%v", c.name, i, counts[i], n, want, tol)
			}
		}
	}
}

const fibPicksInternal = 10_946

// TestLatencyIsLittlesLaw: one request at a time measures its latency; a spike moves the
// average by at most 1.3×; an unanswered Done is no sample.
func TestLatencyIsLittlesLaw(t *testing.T) {
	var l endpointLoad
	l.picked()
	time.Sleep(2 * time.Millisecond)
	l.done(true)
	if got := time.Duration(l.latency()); got < 2*time.Millisecond || got > 50*time.Millisecond {
		t.Fatalf("one request of ≥ 2 ms: latency %v", got)
	}
	before := l.latency()
	l.picked()
	l.done(false) // given back unused: not a sample
	if l.latency() != before {
		t.Fatalf("an unanswered Done changed the latency from %v to %v", before, l.latency())
	}
	l.picked()
	l.last.Store(l.last.Load() - int64(time.Second)) // a call that took a second
	l.done(true)
	if got := l.latency(); got > 1.3*before+1 {
		t.Fatalf("one spike moved the latency from %v to %v, want at most 1.3×", before, got)
	}
	if n := l.n.Load(); n != 0 {
		t.Fatalf("outstanding %d after every request is done", n)
	}
}
