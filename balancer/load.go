package balancer

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// endpointLoad is what the picks know of one endpoint's load: its requests outstanding,
// counted exactly (Pick adds one to the endpoint it returns, the endpoint's Done callback
// takes it off; gRPC calls Done once for every pick it was given, also for one it gives back
// unused, and a stream's when the stream ends), the calls it answered, its latency as the
// balancer's sampler last measured it, and when a call to it last failed in a way that says
// the server is sick. It lives on the balancer's endpoint, so every picker built for the
// endpoint shares it and a rebuild keeps it. Pick and Done use atomics only: no lock.
type endpointLoad struct {
	outstanding atomic.Int64
	// answered counts the calls that ended with an answer: no error, or the error of a wrong
	// request (NOT_FOUND, …); not a sick server's code, not CANCELED. The sampler's
	// completions.
	answered atomic.Int64
	// latency is the endpoint's measured latency in nanoseconds, as float64 bits; 0: never
	// measured. Written by the sampler (sampler.go), read by choose.
	latency atomic.Uint64
	// failedAt is when the last call failed with a code of a sick server (sickCode), on
	// loadClock; 0: no such failure, or the last was failureMemory ago or more when a later
	// call ended. Not 0: the endpoint is no second candidate.
	failedAt atomic.Int64
}

// done counts a call out. A call failing with a code of a sick server marks the endpoint
// (failedAt); a call ending at least failureMemory after the mark clears it. So the clock is
// read when a call fails and when a call of a marked endpoint ends, never in Pick. (A marked
// endpoint keeps its weighted share of first candidates, so its calls go on ending; the
// mark lasts until the first to end after failureMemory.) A call that ends with an answer
// counts in answered.
func (l *endpointLoad) done(err error, clock *loadClock) {
	l.outstanding.Add(-1)
	c := status.Code(err) // OK for nil
	if sickCode(c) {
		l.failedAt.Store(clock.now())
		return
	}
	if c != codes.Canceled { // a caller that gave up got no answer, fast or not
		l.answered.Add(1)
	}
	if f := l.failedAt.Load(); f != 0 && clock.now()-f >= int64(failureMemory) {
		l.failedAt.CompareAndSwap(f, 0) // not if it failed again meanwhile
	}
}

// latencyNs is the endpoint's measured latency in nanoseconds; 0: never measured.
func (l *endpointLoad) latencyNs() float64 { return math.Float64frombits(l.latency.Load()) }

// sickCode reports whether a call ending with code c says the server (or the way to it) is
// unwell rather than that the request was wrong: an endpoint that fails such calls fast
// holds few of them and would otherwise attract picks (a black hole).
func sickCode(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.ResourceExhausted,
		codes.DeadlineExceeded, codes.DataLoss:
		return true
	}
	return false
}

// failureMemory is how long after a sick failure an endpoint is not taken as a second
// candidate (at least: until a call of it ends after that).
const failureMemory = time.Second

// loadClock reads the balancer's clock for failure times, as nanoseconds since the balancer
// was built (monotonic with the real clock), never 0. Read in Done only (endpointLoad.done).
type loadClock struct {
	clock clockwork.Clock
	epoch time.Time
}

func newLoadClock(c clockwork.Clock) *loadClock { return &loadClock{clock: c, epoch: c.Now()} }

func (c *loadClock) now() int64 { return int64(c.clock.Since(c.epoch)) + 1 }

// A first candidate holding fewer than minLoad requests keeps its pick, so sequential
// callers, and any fleet where no endpoint holds two, see exactly the weighted picks.
const minLoad = 2

// secondMul draws the second candidate: k × 2^64/ρ (ρ the plastic number, as in Roberts'
// R2 sequence). 1/φ (the first draw's) and 1/ρ are independent over the rationals (one is
// quadratic, the other cubic), so the pairs (first, second) spread evenly over the
// endpoint pairs, with no random state.
const secondMul = 0xC13FA9A902A6328F

// choose maps the k-th pick to an endpoint: the Weyl sequence's (index), unless that one
// holds at least minLoad requests and a second candidate, drawn uniformly among the other
// endpoints of its color group in this set, costs clearly less:
//
//	cost = latency × (outstanding + 1) / w,   take the second iff cost1 > margin × cost2
//
// with the latencies the sampler measured (sampler.go) and w the base weights
// (EndpointInfo.Weight; warmup and traffic weight are not part of it). The second must have
// a measured latency (a new endpoint gets its weighted share of first candidates until it is
// measured), a base weight above 0 (a drained endpoint never gains a pick) and no sick
// failure within failureMemory (an endpoint failing fast holds few calls). A first
// candidate not yet measured is compared as if its latency were the second's: the loads
// decide. Being in the set already means it is READY, not marked offline (unless all are)
// and, in a sticky set, not degraded, like any pick of the set. No lock, no clock, no
// allocation: a few atomic loads.
func (s *weightedSet) choose(k uint64) int {
	i := s.index(k)
	a := &s.ends[i]
	if a.load == nil || a.hi-a.lo < 2 {
		return i
	}
	o1 := a.load.outstanding.Load()
	failed := a.load.failedAt.Load() != 0
	if o1 < minLoad && !failed {
		return i
	}
	// Uniformly among the hi-lo-1 others of the group: skip over the first's place.
	h, _ := bits.Mul64(k*secondMul, uint64(a.hi-a.lo-1))
	pos := a.lo + int32(h)
	if pos >= a.pos {
		pos++
	}
	j := int(pos)
	if s.group != nil {
		j = int(s.group[pos])
	}
	b := &s.ends[j]
	if b.load == nil || !(b.base > 0) {
		return i
	}
	l2 := b.load.latencyNs()
	if !(l2 > 0) {
		return i
	}
	l1 := a.load.latencyNs()
	if !(l1 > 0) {
		l1 = l2
	}
	o2 := b.load.outstanding.Load()
	// The bases are scaled so that the largest of the set is below 1 (scaleBases), the
	// latencies are in nanoseconds and the counts far below 2^53: the products are finite.
	if !failed && !(l1*float64(o1+1)*b.base >= margin*l2*float64(o2+1)*a.base) {
		return i
	}
	if b.load.failedAt.Load() != 0 {
		return i
	}
	return j
}

// margin is how much more a first candidate must cost than the second to lose the pick.
const margin = 0.8

// scaleBases scales the set's base weights by the power of two that brings the largest
// below 1 (exact, as for the weights in finish), so that choose's products cannot overflow
// at any weights up to MaxFloat64. A base more than 2^1074 times smaller than the largest
// becomes 0, as its share of the picks is.
func (s *weightedSet) scaleBases() {
	largest := 0.0
	for i := range s.ends {
		largest = max(largest, s.ends[i].base)
	}
	if largest == 0 {
		return
	}
	_, exp := math.Frexp(largest)
	for i := range s.ends {
		s.ends[i].base = math.Ldexp(s.ends[i].base, -exp)
	}
}

// groupEnds builds the color groups of the set: each end gets its group's range [lo, hi) and
// its own position there. The color of an end is in pos until then (add). When each group's
// ends are contiguous (the balancer adds the undecided set's endpoints color by color; a
// sticky set is one color), the range is their run in the set and group stays nil;
// otherwise group lists the ends' indices by group (blue, green, colorless; each in the
// set's order) and the ranges are in it.
func (s *weightedSet) groupEnds() {
	n := int32(len(s.ends))
	var count [3]int32
	runs := 0
	for i := range s.ends {
		g := s.ends[i].pos
		count[g]++
		if i == 0 || s.ends[i-1].pos != g {
			runs++
		}
	}
	groups := btoi(count[0] > 0) + btoi(count[1] > 0) + btoi(count[2] > 0)
	if runs == groups { // contiguous
		for lo := int32(0); lo < n; {
			hi := lo + count[s.ends[lo].pos]
			for i := lo; i < hi; i++ {
				e := &s.ends[i]
				e.lo, e.hi, e.pos = lo, hi, i
			}
			lo = hi
		}
		return
	}
	var start [4]int32
	for g := range 3 {
		start[g+1] = start[g] + count[g]
	}
	next := start
	s.group = make([]int32, n)
	for i := range s.ends {
		e := &s.ends[i]
		g := e.pos
		e.lo, e.hi, e.pos = start[g], start[g+1], next[g]
		s.group[next[g]] = int32(i)
		next[g]++
	}
}

// groupOf is an end's group in groupEnds: 0 blue, 1 green, 2 colorless.
func groupOf(colorSlot int) int32 {
	if colorSlot < 0 {
		return 2
	}
	return int32(colorSlot)
}
