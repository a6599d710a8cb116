package balancer

import (
	"context"
	"log/slog"
	"math"
	"sync/atomic"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/reach"
	"github.com/switchyard-go/switchyard/internal/sticky"
)

// weightedSet picks among endpoints in proportion to their weights. It is built by grow,
// add for each endpoint, then finish, and immutable after.
//
// The weights are stored scaled by a power of two (exact: the shares and the picks are those
// of the raw weights) so that the largest is below 1 and the total at most the number of
// endpoints: weights near MaxFloat64 cannot overflow the running total to +Inf, and tiny ones
// keep full precision.
//
// A pick maps a point x in [0, total) to the first endpoint whose cumulative weight exceeds
// it. A guide table makes that O(1) at any size: the range is cut into as many equal buckets
// as there are endpoints, and guide[b] is the first endpoint a point of bucket b can map to,
// so the search is a binary search between guide[b] and guide[b+2], which hold about two
// endpoints apart on average (Chen and Asau's indexed search). It finds exactly what a
// binary search over all of cum finds, so every endpoint keeps one interval of [0, total)
// and the Weyl sequence's Fibonacci-window accuracy (TestFibonacciWindows).
type weightedSet struct {
	pickers []balancer.Picker // the endpoints' pick_first pickers
	ends    []pickEnd         // per endpoint: what a pick of it calls and counts
	group   []int32           // endpoint indices by color group (load.go); nil: one group
	cum     []float64         // cum[i] = weights[0] + … + weights[i], scaled by 2^-exp
	guide   []int32           // len(cum)+2 entries: see above
	buckets float64           // len(cum), as a float
	total   float64           // 0: every weight is 0, pick evenly
}

// grow makes room for n endpoints (the sizes are known up front: one allocation each).
func (s *weightedSet) grow(n int) {
	s.pickers = make([]balancer.Picker, 0, n)
	s.ends = make([]pickEnd, 0, n)
	s.cum = make([]float64, 0, n)
}

// pickEnd is what a pick of one endpoint calls and counts, and what choose compares.
type pickEnd struct {
	done func(balancer.DoneInfo) // its Done callback, built once: no closure per pick
	cell *pickCell               // its picks counter (switchyard.balancer.picks); nil: not counted
	load *endpointLoad           // its requests outstanding; nil: not counted, never a second candidate
	base float64                 // its base weight (EndpointInfo.Weight), for choose
	// lo, hi: its color group's range in group (the whole set without one); pos: its place
	// there. Until finish, pos holds its group (groupOf).
	lo, hi, pos int32
}

// add appends an endpoint that takes no part in load-aware picking (its load is not
// counted): its picker, Done callback, pick counter (nil for none) and weight.
func (s *weightedSet) add(p balancer.Picker, done func(balancer.DoneInfo), cell *pickCell, w float64) {
	s.addLoaded(p, pickEnd{done: done, cell: cell}, -1, w)
}

// addLoaded appends an endpoint: its picker, end (done, cell, load and base weight; the
// rest is set by finish), color slot (-1: colorless) and weight. A weight that is not a
// number or is negative counts as 0, +Inf as MaxFloat64; so does the base weight.
func (s *weightedSet) addLoaded(p balancer.Picker, end pickEnd, color int, w float64) {
	end.base, end.pos = sanitize(end.base), groupOf(color)
	s.pickers = append(s.pickers, p)
	s.ends = append(s.ends, end)
	s.cum = append(s.cum, sanitize(w)) // the raw weight until finish
}

// sanitize makes a weight that is not a number or is negative 0, and +Inf MaxFloat64.
func sanitize(w float64) float64 {
	switch {
	case !(w > 0): // negative, 0 or NaN
		return 0
	case w > math.MaxFloat64:
		return math.MaxFloat64
	}
	return w
}

// finish groups the endpoints by color (groupEnds) and scales their base weights
// (scaleBases), scales the weights, sums them up and builds the guide table.
func (s *weightedSet) finish() {
	s.groupEnds()
	s.scaleBases()
	largest := 0.0
	for _, w := range s.cum {
		largest = max(largest, w)
	}
	if largest == 0 {
		s.total = 0
		return
	}
	_, exp := math.Frexp(largest) // largest = f × 2^exp, 0.5 <= f < 1
	total := 0.0
	if exp >= -1021 && exp <= 1021 { // 2^-exp is a normal number: multiplying by it is Ldexp
		scale := math.Ldexp(1, -exp)
		for i, w := range s.cum {
			total += w * scale
			s.cum[i] = total
		}
	} else {
		for i, w := range s.cum {
			total += math.Ldexp(w, -exp)
			s.cum[i] = total
		}
	}
	s.total = total
	n := len(s.cum)
	s.buckets = float64(n)
	s.guide = make([]int32, n+2)
	// guide[j] = the first i with cum[i] > t_j (or the last), t_j a hair below j/n × total:
	// every point of bucket b is at least t_b and below t_(b+2), whatever the rounding.
	last, i := n-1, 0
	for j := 0; j <= n; j++ {
		t := float64(j) / s.buckets * total * (1 - 0x1p-50)
		for i < last && s.cum[i] <= t {
			i++
		}
		s.guide[j] = int32(i)
	}
	s.guide[n+1] = int32(last)
}

func (s *weightedSet) len() int { return len(s.pickers) }

// index maps the k-th pick to an endpoint. k runs through a Weyl sequence (k × 2^64/φ): a
// deterministic, evenly spread stream of points in [0, 1), so every endpoint gets its share
// within a few picks, and it takes no lock and no random state.
func (s *weightedSet) index(k uint64) int {
	if s.total <= 0 {
		return int(k % uint64(len(s.pickers))) // round robin
	}
	k *= 0x9E3779B97F4A7C15
	u := float64(k>>11) / (1 << 53)
	x := u * s.total
	b := int(u * s.buckets) // < len(cum): u < 1
	lo, hi := int(s.guide[b]), int(s.guide[b+2])
	for lo < hi { // first i with cum[i] > x
		mid := int(uint(lo+hi) >> 1)
		if s.cum[mid] > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// picker is an immutable snapshot of the ready endpoints, swapped in whole by the balancer.
// Pick takes no lock and allocates nothing: one atomic add, an optional baggage lookup (a
// cache hit when the request's baggage is one already seen), a guide-table lookup, an
// atomic load of the endpoint's requests outstanding and failure mark (and, when it holds two or more, a
// second candidate and four more loads: choose), one atomic add to count the pick in its
// endpoint's cell and one to count it outstanding.
type picker struct {
	all     weightedSet    // by effective weight
	byColor [2]weightedSet // blue, green: by base weight × warmup only (sticky picks)
	// pending[c]: color c has no ready endpoint yet but one is connecting (within the sticky
	// wait), so a request decided for c waits for the next picker.
	pending [2]bool
	// waitWeighted: every endpoint in all weighs 0 but one of non-zero weight is connecting,
	// so a request picked from all waits for the next picker rather than reach a drained one.
	waitWeighted bool
	channel      string // the endpoints' release channel; "" means no sticky filtering
	weightsOnly  bool   // {"loadAware": false}: the weighted pick only, no second candidate
	// decisions reads the channel's decision from a pick's baggage; nil when channel is "".
	// Shared by the pickers of one balancer while the channel stays the same.
	decisions *sticky.Cache
	next      *atomic.Uint64 // shared across pickers of one balancer

	fallbacks metric.Int64Counter
	refusals  metric.Int64Counter
	fbAttrs   metric.AddOption
	log       *slog.Logger
	reach     *reach.Entry // the connection's place on the reach board: a refusal notes its caller

	// Built once per picker by prepare, so the rare paths below allocate little:
	refused   [2]error       // by the decided color: the status of a refused crossing
	redecided [2]metadata.MD // by the color crossed to: the baggage header of a plain decision
}

func colorIndex(c deploy.Color) int { return sticky.Index(c) }

// prepare builds the errors and headers of the crossing paths. app names the target.
func (p *picker) prepare(app string) {
	if p.channel == "" {
		return
	}
	for ci, color := range [2]deploy.Color{deploy.Blue, deploy.Green} {
		other := color.Other()
		p.refused[ci] = status.Errorf(codes.Unavailable,
			"switchyard balancer: no usable %s instance of %s in channel %s (none ready, or degraded, or connecting for longer than the sticky wait); this %s caller does not cross to %s, since new code must not call old code",
			color, app, p.channel, color, other)
		p.redecided[sticky.Index(other)] = decisionHeader(p.channel + "=" + string(other))
	}
}

// decisionHeader is a baggage header carrying one decision value.
func decisionHeader(value string) metadata.MD {
	m, err := baggage.NewMemberRaw(deploy.BaggageKey, value)
	if err != nil {
		return nil
	}
	b, err := baggage.New(m)
	if err != nil {
		return nil
	}
	return metadata.Pairs("baggage", b.String())
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	set := &p.all
	var md metadata.MD      // set when the request crosses: its new decision
	if p.decisions != nil { // the endpoints are in a channel
		if color, ok := p.decisions.Decision(baggage.FromContext(info.Ctx)); ok {
			ci := colorIndex(color)
			if cs := &p.byColor[ci]; cs.len() > 0 {
				set = cs
			} else {
				// No usable endpoint of that color (the rare path). A caller that is code of
				// that color is noted on the reach board: this connection counts for it.
				own := sticky.OwnOf(info.Ctx)
				if own != nil && (own.Channel != p.channel || own.Color != color) {
					own = nil
				}
				if own != nil {
					p.reach.Use(own.Instance)
				}
				switch {
				case p.pending[ci] || p.waitWeighted:
					return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
				case own != nil:
					p.refuse(info.Ctx, color)
					return balancer.PickResult{}, p.refused[ci]
				}
				// The caller is not code of that color (the entry, or the other color):
				// cross to the other color, and re-decide so the chain below stays on it.
				// If that color has no usable endpoint either, pick by weight and keep the
				// decision: whatever serves it then refuses rather than cross further down.
				p.fallback(info.Ctx, color)
				if os := &p.byColor[1-ci]; os.len() > 0 {
					set = os
					md = p.redecide(baggage.FromContext(info.Ctx).Member(deploy.BaggageKey).Value(), color)
				}
			}
		}
	}
	if set == &p.all && p.waitWeighted {
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	var i int
	if k := p.next.Add(1); p.weightsOnly {
		i = set.index(k)
	} else {
		i = set.choose(k)
	}
	res, err := set.pickers[i].Pick(info)
	if err != nil {
		return res, err
	}
	end := &set.ends[i]
	if end.cell != nil {
		end.cell.n.Add(1)
	}
	if end.load != nil {
		end.load.outstanding.Add(1) // its Done callback takes it off
	}
	if md != nil {
		res.Metadata = metadata.Join(res.Metadata, md)
	}
	if res.Done == nil {
		res.Done = end.done
	} else { // a child with its own callback: call both (allocates; pick_first has none)
		child, ours := res.Done, end.done
		res.Done = func(di balancer.DoneInfo) { child(di); ours(di) }
	}
	return res, nil
}

// redecide returns the baggage header that re-decides a request crossing from color to the
// other: gRPC sends it after the caller's, and the next hop's server interceptor merges
// baggage headers with later ones winning.
func (p *picker) redecide(value string, color deploy.Color) metadata.MD {
	other := color.Other()
	if value == p.channel+"="+string(color) {
		return p.redecided[colorIndex(other)] // built once
	}
	return decisionHeader(sticky.Redecide(value, p.channel, other))
}

// fallback counts a sticky request whose color has no usable endpoint, from a caller that is
// not code of that color: it goes to the other color rather than fail.
func (p *picker) fallback(ctx context.Context, color deploy.Color) {
	p.fallbacks.Add(ctx, 1, p.fbAttrs)
	if p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.DebugContext(ctx, "switchyard balancer: no usable endpoint of the decided color; using the other and re-deciding", "channel", p.channel, "color", color)
	}
}

// refuse counts a sticky request failed rather than sent from code of its color to the other.
func (p *picker) refuse(ctx context.Context, color deploy.Color) {
	p.refusals.Add(ctx, 1, p.fbAttrs)
	if p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.DebugContext(ctx, "switchyard balancer: no usable endpoint of the caller's own color; failing rather than crossing", "channel", p.channel, "color", color)
	}
}
