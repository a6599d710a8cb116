package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

// loadEnd is one endpoint of a loadFleet.
type loadEnd struct {
	color int     // colorSlot: 0 blue, 1 green, -1 colorless
	base  float64 // base weight (EndpointInfo.Weight)
	eff   float64 // its weight in the undecided set; 0: base
}

// loadFleet is a picker built as sendLocked builds one: an undecided set of every endpoint by
// effective weight, and a sticky set per color by base weight, over endpoints whose
// requests outstanding and failures are counted (endpointLoad), on a fake clock. Each
// endpoint's picker answers with its index in the fleet (metadata "i"). Every endpoint starts
// with a measured latency of 1 ms (setLatency changes it).
type loadFleet struct {
	p     *picker
	ends  []loadEnd
	loads []*endpointLoad
	done  []func(balancer.DoneInfo)
	clock *clockwork.FakeClock
	lc    *loadClock // on clock, as the endpoints' Done callbacks use it
}

func newLoadFleet(ends ...loadEnd) *loadFleet {
	f := &loadFleet{ends: ends, clock: clockwork.NewFakeClock()}
	lc := newLoadClock(f.clock)
	f.lc = lc
	f.p = &picker{next: new(atomic.Uint64), channel: "trade", decisions: sticky.NewCache("trade"),
		fallbacks: noop.Int64Counter{}, refusals: noop.Int64Counter{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i, e := range ends {
		l := new(endpointLoad)
		l.latency.Store(math.Float64bits(float64(time.Millisecond)))
		done := func(di balancer.DoneInfo) { l.done(di.Err, lc) }
		f.loads, f.done = append(f.loads, l), append(f.done, done)
		pk := fixedPicker{balancer.PickResult{Metadata: metadata.Pairs("i", strconv.Itoa(i))}}
		end := pickEnd{done: done, load: l, base: e.base}
		eff := e.eff
		if eff == 0 {
			eff = e.base
		}
		f.p.all.addLoaded(pk, end, e.color, eff)
		if e.color >= 0 {
			f.p.byColor[e.color].addLoaded(pk, end, e.color, e.base)
		}
	}
	f.p.all.finish()
	f.p.byColor[0].finish()
	f.p.byColor[1].finish()
	return f
}

// set gives every endpoint the requests outstanding o[i].
func (f *loadFleet) set(o ...int64) {
	for i, n := range o {
		f.loads[i].outstanding.Store(n)
	}
}

// setLatency gives endpoint i the measured latency d (0: never measured).
func (f *loadFleet) setLatency(i int, d time.Duration) {
	f.loads[i].latency.Store(math.Float64bits(float64(d)))
}

// movesTo counts the picks of k0+1 … k0+n on the undecided set that go to endpoint j when
// the Weyl sequence's is another.
func (f *loadFleet) movesTo(j int, k0 uint64, n int) int {
	moved := 0
	for k := k0 + 1; k <= k0+uint64(n); k++ {
		if f.p.all.index(k) != j && f.p.all.choose(k) == j {
			moved++
		}
	}
	return moved
}

// pick makes one pick with ctx, as a call does, and returns the endpoint's index in the
// fleet; the call ends (Done) at once.
func (f *loadFleet) pick(t *testing.T, ctx context.Context) int {
	t.Helper()
	res, err := f.p.Pick(balancer.PickInfo{FullMethodName: "/m", Ctx: ctx})
	if err != nil {
		t.Fatalf("pick: %v", err)
	}
	i, err := strconv.Atoi(res.Metadata.Get("i")[0])
	if err != nil {
		t.Fatal(err)
	}
	res.Done(balancer.DoneInfo{})
	return i
}

// end ends a call to endpoint i with err (nil: it succeeded), as gRPC does.
func (f *loadFleet) end(i int, err error) {
	f.loads[i].outstanding.Add(1)
	f.done[i](balancer.DoneInfo{Err: err})
}

// moveCount counts the picks of k0+1 … k0+n on the undecided set that go to another
// endpoint than the Weyl sequence's, and fails t if one crosses to another color group.
func (f *loadFleet) moveCount(t *testing.T, k0 uint64, n int) int {
	t.Helper()
	moved := 0
	for k := k0 + 1; k <= k0+uint64(n); k++ {
		first, got := f.p.all.index(k), f.p.all.choose(k)
		if got != first {
			moved++
			if f.ends[got].color != f.ends[first].color {
				t.Fatalf("pick %d: moved from endpoint %d (color %d) to %d (color %d)", k, first, f.ends[first].color, got, f.ends[got].color)
			}
		}
	}
	return moved
}

// decided is a context whose baggage decides channel trade for color c.
func decided(t *testing.T, c deploy.Color) context.Context {
	t.Helper()
	m, err := baggage.NewMemberRaw(deploy.BaggageKey, "trade="+string(c))
	if err != nil {
		t.Fatal(err)
	}
	bg, err := baggage.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return baggage.ContextWithBaggage(context.Background(), bg)
}

// splitWeights are the traffic weights of blue and green at p % blue (traffic.Weights,
// which this package's tests cannot import).
func splitWeights(p float64) (blue, green float64) {
	if p <= 50 {
		return 100 * p / (100 - p), 100
	}
	return 100, 100 * (100 - p) / p
}

// TestBelowTwoOutstandingPicksAreTheWeightedOnes: while no endpoint holds 2 requests, every
// pick, undecided or sticky, is exactly the Weyl sequence's by weight (as before load-aware
// picking), whatever the 0s and 1s.
func TestBelowTwoOutstandingPicksAreTheWeightedOnes(t *testing.T) {
	f := newLoadFleet(
		loadEnd{0, 100, 1}, loadEnd{0, 50, 0.5}, loadEnd{1, 100, 99}, loadEnd{1, 300, 297},
		loadEnd{1, 100, 99}, loadEnd{-1, 100, 100}, loadEnd{-1, 10, 10})
	// byColor's indices in the fleet.
	var inColor [2][]int
	for i, e := range f.ends {
		if e.color >= 0 {
			inColor[e.color] = append(inColor[e.color], i)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	f.p.next.Store(1 << 40)
	blue, green := decided(t, deploy.Blue), decided(t, deploy.Green)
	for range 20_000 {
		for _, l := range f.loads {
			l.outstanding.Store(int64(rng.IntN(2)))
		}
		k := f.p.next.Load() + 1
		var want int
		ctx := context.Background()
		switch rng.IntN(3) {
		case 0:
			want = f.p.all.index(k)
		case 1:
			ctx, want = blue, inColor[0][f.p.byColor[0].index(k)]
		case 2:
			ctx, want = green, inColor[1][f.p.byColor[1].index(k)]
		}
		if got := f.pick(t, ctx); got != want {
			t.Fatalf("pick %d, no endpoint holding 2 requests: endpoint %d, the weighted sequence says %d", k, got, want)
		}
	}
}

// TestLoadedFirstMovesToAnIdleSecondOfItsColor: four blue and four green endpoints of equal
// weights and latencies, all holding 6 requests but blue-3 and green-3, which hold none, and
// blue-2 and green-2, which hold 12. A pick whose first candidate holds 6 moves unless its
// second holds 12 (7 >= 0.8 × 7: a second of equal cost wins; 7 < 0.8 × 13), one holding 12
// always moves, and the idle one keeps its picks: never to the other color, so each color
// keeps its Fibonacci-window share ±2.
func TestLoadedFirstMovesToAnIdleSecondOfItsColor(t *testing.T) {
	var ends []loadEnd
	for i := range 8 {
		ends = append(ends, loadEnd{i / 4, 100, 0})
	}
	f := newLoadFleet(ends...)
	f.set(6, 6, 12, 0, 6, 6, 12, 0)
	const n = 10_946
	var moved, toIdle, fromSix, blue int
	for k := uint64(1); k <= n; k++ {
		first, got := f.p.all.index(k), f.p.all.choose(k)
		if got/4 != first/4 {
			t.Fatalf("pick %d: moved from endpoint %d to %d, of the other color", k, first, got)
		}
		switch first % 4 {
		case 3:
			if got != first {
				t.Fatalf("pick %d: the idle endpoint %d lost its pick to %d", k, first, got)
			}
		case 2:
			if got == first {
				t.Fatalf("pick %d: endpoint %d holding 12 kept its pick", k, first)
			}
		default:
			fromSix++
			if got%4 == 2 {
				t.Fatalf("pick %d: endpoint %d holding 6 moved to %d holding 12", k, first, got)
			}
		}
		if got != first {
			moved++
			if got%4 == 3 {
				toIdle++
			}
		}
		if got < 4 {
			blue++
		}
	}
	if moved == 0 || toIdle == 0 {
		t.Fatalf("%d picks moved, %d to an idle endpoint", moved, toIdle)
	}
	checkShareInternal(t, "blue picks", blue, n, 0.5)
}

// TestSecondNeedsAMeasuredLatency: an endpoint never measured is never a second candidate,
// however idle; a first candidate never measured is compared as if its latency were the
// second's.
func TestSecondNeedsAMeasuredLatency(t *testing.T) {
	f := newLoadFleet(loadEnd{0, 100, 0}, loadEnd{0, 100, 0})
	f.set(50, 0)
	f.setLatency(1, 0)
	if moved := f.moveCount(t, 0, 2000); moved != 0 {
		t.Fatalf("%d picks moved to an endpoint never measured", moved)
	}
	f.setLatency(1, time.Millisecond)
	f.setLatency(0, 0)
	if moved := f.movesTo(1, 0, 2000); moved == 0 {
		t.Fatal("no pick moved from an unmeasured endpoint holding 50 to a measured idle one")
	}
	f.set(2, 3) // (2+1) < 0.8 × (3+1) at equal latencies: keeps
	if moved := f.moveCount(t, 0, 2000); moved != 0 {
		t.Fatalf("%d picks moved from an unmeasured endpoint holding 2 to one holding 3", moved)
	}
}

// TestLatencyCompared: the first candidate (latency l1, o1 outstanding) loses the pick to
// the second (l2, o2) iff o1 >= 2 and l1 × (o1+1) >= 0.8 × l2 × (o2+1) (equal weights).
func TestLatencyCompared(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		l1     time.Duration
		o1     int64
		l2     time.Duration
		o2     int64
		moveTo bool
	}{
		{30 * ms, 1, ms, 0, false}, // below 2: never, however slow
		{30 * ms, 2, ms, 0, true},
		{30 * ms, 2, ms, 80, true}, // 90 >= 0.8 × 81
		{30 * ms, 2, ms, 111, true},
		{30 * ms, 2, ms, 112, false}, // 90 < 0.8 × 113
		{ms, 50, 30 * ms, 0, true},   // 51 >= 0.8 × 30
		{ms, 20, 30 * ms, 0, false},  // a slow second loses to a loaded fast first
		{ms, 2, 30 * ms, 0, false},
		{10 * ms, 4, 5 * ms, 9, true}, // 50 >= 0.8 × 50: a second of equal cost wins
		{10 * ms, 4, 5 * ms, 12, false},
	} {
		f := newLoadFleet(loadEnd{0, 100, 1}, loadEnd{0, 100, 1})
		f.set(c.o1, c.o2)
		f.setLatency(0, c.l1)
		f.setLatency(1, c.l2)
		k := uint64(1)
		for f.p.all.index(k) != 0 {
			k++
		}
		if got, want := f.p.all.choose(k), btoi(c.moveTo); got != want {
			t.Errorf("l1 %v o1 %d, l2 %v o2 %d: picked endpoint %d, want %d", c.l1, c.o1, c.l2, c.o2, got, want)
		}
	}
}

// TestFailedFirstHandsItsPickToAHealthySecond: a first candidate that failed a call with a
// sick server's code hands its pick to a second that did not, whatever the loads (0 held:
// an endpoint failing fast), until the mark is cleared.
func TestFailedFirstHandsItsPickToAHealthySecond(t *testing.T) {
	f := newLoadFleet(loadEnd{0, 100, 0}, loadEnd{0, 100, 0}, loadEnd{0, 100, 0})
	f.set(0, 0, 40)
	// movedFrom0 counts the picks whose first candidate is endpoint 0 and that go elsewhere,
	// of those whose first candidate it is.
	movedFrom0 := func() (moved, first int) {
		for k := uint64(1); k <= 3000; k++ {
			if f.p.all.index(k) == 0 {
				first++
				if f.p.all.choose(k) != 0 {
					moved++
				}
			}
		}
		return moved, first
	}
	if moved, _ := movedFrom0(); moved != 0 {
		t.Fatalf("%d picks moved from an idle endpoint", moved)
	}
	f.end(0, status.Error(codes.Unavailable, "down"))
	if moved, first := movedFrom0(); moved != first {
		t.Fatalf("the failed endpoint kept %d of its %d picks", first-moved, first)
	}
	f.clock.Advance(failureMemory - time.Millisecond)
	f.loads[0].clearFailure(f.lc)
	if moved, first := movedFrom0(); moved != first {
		t.Fatalf("%v after it failed, the endpoint kept %d of its %d picks", failureMemory-time.Millisecond, first-moved, first)
	}
	f.clock.Advance(time.Millisecond)
	f.loads[0].clearFailure(f.lc) // as the sampler does at each window
	if moved, _ := movedFrom0(); moved != 0 {
		t.Fatalf("%d picks moved from the endpoint after its mark was cleared", moved)
	}
}

// TestSecondNeverCrossesColors: with blue loaded and green idle, undecided picks keep the
// 1 % blue split (±2 over a Fibonacci window), and sticky picks stay on their color; two
// colorless endpoints move between themselves only.
func TestSecondNeverCrossesColors(t *testing.T) {
	bw, gw := splitWeights(1)
	f := newLoadFleet(loadEnd{0, 100, bw}, loadEnd{0, 100, bw}, loadEnd{0, 100, bw},
		loadEnd{1, 100, gw}, loadEnd{1, 100, gw}, loadEnd{1, 100, gw},
		loadEnd{-1, 100, 100}, loadEnd{-1, 100, 100})
	f.set(100, 40, 0, 0, 0, 0, 9, 0)
	const n = 10_946
	if moved := f.moveCount(t, 0, n); moved == 0 {
		t.Fatal("no pick moved: the test does not exercise the second candidate")
	}
	count := make([]int, len(f.ends))
	for k := uint64(1); k <= n; k++ {
		count[f.p.all.choose(k)]++
	}
	total := 3*bw + 3*gw + 200
	checkShareInternal(t, "blue picks", count[0]+count[1]+count[2], n, 3*bw/total)
	checkShareInternal(t, "green picks", count[3]+count[4]+count[5], n, 3*gw/total)
	checkShareInternal(t, "colorless picks", count[6]+count[7], n, 200/total)

	// Sticky: green loaded now, blue idle.
	f.set(0, 0, 0, 100, 100, 100, 0, 0)
	for _, c := range []deploy.Color{deploy.Blue, deploy.Green} {
		ctx := decided(t, c)
		for range 2000 {
			if got := f.pick(t, ctx); f.ends[got].color != colorSlot(c) {
				t.Fatalf("a pick decided %s went to endpoint %d of color %d", c, got, f.ends[got].color)
			}
		}
	}
}

// TestSecondNeverDrained: an endpoint of base weight 0 gains no pick, however loaded the
// others of its color, in the undecided set or a sticky one.
func TestSecondNeverDrained(t *testing.T) {
	f := newLoadFleet(loadEnd{0, 100, 0}, loadEnd{0, 100, 0}, loadEnd{0, 0, 0}, loadEnd{1, 100, 0})
	f.set(50, 50, 0, 0)
	if moved := f.movesTo(2, 0, 10_000); moved != 0 {
		t.Fatalf("%d picks moved to a drained endpoint", moved)
	}
	blue := decided(t, deploy.Blue)
	for range 2000 {
		if got := f.pick(t, blue); got == 2 {
			t.Fatal("a sticky pick went to the drained endpoint")
		}
		if got := f.pick(t, context.Background()); got == 2 {
			t.Fatal("an undecided pick went to the drained endpoint")
		}
	}
}

// TestSecondNeverFailedRecently: a call ending with a code of a sick server keeps its
// endpoint from being a second candidate until a call of it ends a second or more after that
// failure (on the balancer's clock); a code of a wrong request does not.
func TestSecondNeverFailedRecently(t *testing.T) {
	for _, c := range []struct {
		code codes.Code
		sick bool
	}{
		{codes.Unavailable, true}, {codes.Internal, true}, {codes.Unknown, true},
		{codes.ResourceExhausted, true}, {codes.DeadlineExceeded, true}, {codes.DataLoss, true},
		{codes.NotFound, false}, {codes.InvalidArgument, false}, {codes.FailedPrecondition, false},
		{codes.Canceled, false}, {codes.PermissionDenied, false}, {codes.AlreadyExists, false},
	} {
		f := newLoadFleet(loadEnd{0, 100, 0}, loadEnd{0, 100, 0})
		f.set(5, 0)
		const n = 1000
		if moved := f.movesTo(1, 0, n); moved < n/3 {
			t.Fatalf("%v: %d of %d picks moved from a loaded endpoint to an idle one; want about half", c.code, moved, n)
		}
		f.end(1, status.Error(c.code, "failed"))
		moved := f.movesTo(1, 0, n)
		if !c.sick {
			if moved == 0 {
				t.Errorf("%v (a wrong request, not a sick server): no pick moves to the endpoint after it", c.code)
			}
			continue
		}
		if moved != 0 {
			t.Errorf("%v: %d picks moved to the endpoint just after it failed", c.code, moved)
		}
		f.clock.Advance(failureMemory - time.Millisecond)
		f.end(1, nil)
		if moved := f.movesTo(1, 0, n); moved != 0 {
			t.Errorf("%v: %d picks moved to the endpoint after a call of it ended %v after it failed", c.code, moved, failureMemory-time.Millisecond)
		}
		f.clock.Advance(time.Millisecond)
		if moved := f.movesTo(1, 0, n); moved != 0 {
			t.Errorf("%v: %d picks moved to the endpoint %v after it failed, before a call of it ended", c.code, moved, failureMemory)
		}
		f.end(1, nil)
		if moved := f.movesTo(1, 0, n); moved == 0 {
			t.Errorf("%v: no pick moves to the endpoint after a call of it ended %v after it failed", c.code, failureMemory)
		}
	}
	// A failure again within the second: the mark lasts a second from the last one.
	f := newLoadFleet(loadEnd{0, 100, 0}, loadEnd{0, 100, 0})
	f.set(5, 0)
	f.end(1, status.Error(codes.Unavailable, "down"))
	f.clock.Advance(900 * time.Millisecond)
	f.end(1, status.Error(codes.Unavailable, "down"))
	f.clock.Advance(100 * time.Millisecond)
	f.end(1, nil)
	if moved := f.movesTo(1, 0, 100); moved != 0 {
		t.Errorf("failed again 0.9 s after: %d picks moved to the endpoint 0.1 s after that", moved)
	}
	f.clock.Advance(900 * time.Millisecond)
	f.end(1, nil)
	if moved := f.movesTo(1, 0, 100); moved == 0 {
		t.Errorf("no pick moves to the endpoint after a call of it ended a second after its last failure")
	}
	// A wrapped status counts by its code; an error of no status is Unknown.
	f = newLoadFleet(loadEnd{0, 100, 0}, loadEnd{0, 100, 0})
	f.set(5, 0)
	f.end(1, fmt.Errorf("wrapped: %w", status.Error(codes.Unavailable, "down")))
	if moved := f.movesTo(1, 0, 100); moved != 0 {
		t.Errorf("wrapped Unavailable: %d picks moved to the endpoint just after it failed", moved)
	}
	f.clock.Advance(failureMemory)
	f.end(1, nil)
	f.end(1, errors.New("no status"))
	if moved := f.movesTo(1, 0, 100); moved != 0 {
		t.Errorf("an error without a status: %d picks moved to the endpoint just after it failed", moved)
	}
	if o := f.loads[1].outstanding.Load(); o != 0 {
		t.Errorf("outstanding %d after the failed calls ended, want 0", o)
	}
}

// TestLoadComparedPerBaseWeight: at equal latencies, the first candidate (weight w1, o1
// outstanding) loses the pick to the second (w2, o2) iff o1 >= 2 and
// (o1 + 1) × w2 >= 0.8 × (o2 + 1) × w1 and w2 > 0, at any weights, up to MaxFloat64.
func TestLoadComparedPerBaseWeight(t *testing.T) {
	for _, c := range []struct {
		w1     float64
		o1     int64
		w2     float64
		o2     int64
		moveTo bool
	}{
		{100, 1, 100, 0, false}, // below 2: never
		{100, 2, 100, 0, true},
		{100, 2, 100, 2, true}, // a second of equal cost wins
		{100, 2, 100, 3, false},
		{100, 3, 100, 4, true},
		{100, 3, 100, 5, false},
		{100, 2, 50, 0, true}, // a half-weight second: 0.8 × 2 × (o2+1) <= o1+1
		{100, 2, 50, 1, false},
		{100, 3, 50, 1, true},
		{100, 7, 50, 4, true},
		{100, 7, 50, 5, false},
		{50, 2, 100, 3, true}, // a double-weight second: 0.4 × (o2+1) <= o1+1
		{50, 2, 100, 6, true},
		{50, 2, 100, 7, false},
		{1e308, 2, 1e308, 2, true},
		{1e308, 2, 1e308, 3, false},
		{math.MaxFloat64, 3, math.MaxFloat64, 4, true},
		{5e-324, 2, 1e308, 5, true},          // w2/w1 overflows: the second is far bigger
		{1e308, 1 << 40, 5e-324, 0, false},   // w2/w1 is 0
		{0, 2, 100, 5, true},                 // a drained first moves to any weighted second
		{100, 1 << 40, 0, 0, false},          // a drained second: never
		{0, 5, 0, 0, false},                  // nor between drained ones (all drained: round robin)
		{100, 1 << 40, math.NaN(), 0, false}, // NaN counts as 0
		{100, 1 << 40, -1, 0, false},
	} {
		f := newLoadFleet(loadEnd{0, c.w1, 1}, loadEnd{0, c.w2, 1})
		f.set(c.o1, c.o2)
		k := uint64(1)
		for f.p.all.index(k) != 0 {
			k++
		}
		got := f.p.all.choose(k)
		if want := btoi(c.moveTo); got != want {
			t.Errorf("w1 %v o1 %d, w2 %v o2 %d: picked endpoint %d, want %d", c.w1, c.o1, c.w2, c.o2, got, want)
		}
	}
}

// TestColorSplitExactUnderRandomLoad: whatever every endpoint holds (0 to 60 requests,
// changing every few picks, some failed recently), the color split of any Fibonacci window
// of picks is its share ±2, at every blue percent, as without load-aware picking.
func TestColorSplitExactUnderRandomLoad(t *testing.T) {
	bases := []float64{100, 50, 200, 100, 300, 100, 25, 100}
	colors := []int{1, 1, 0, 1, 1, 0, 1, 0}
	rng := rand.New(rand.NewPCG(7, 8))
	for _, pct := range []float64{1, 10, 50, 99} {
		bw, gw := splitWeights(pct)
		var ends []loadEnd
		blueTotal, total := 0.0, 0.0
		for i, b := range bases {
			w := [2]float64{bw, gw}[colors[i]] * b / 100
			ends = append(ends, loadEnd{colors[i], b, w})
			total += w
			if colors[i] == 0 {
				blueTotal += w
			}
		}
		f := newLoadFleet(ends...)
		for _, k0 := range []uint64{0, 12345, 1 << 63, math.MaxUint64 - 5000} {
			f.p.next.Store(k0)
			const n = 10_946
			blue, moved := 0, 0
			for i := range n {
				if i%7 == 0 {
					for j, l := range f.loads {
						l.outstanding.Store(int64(rng.IntN(61)))
						l.failedAt.Store(0)
						if rng.IntN(4) == 0 {
							f.end(j, status.Error(codes.Unavailable, "down"))
						}
					}
				}
				k := f.p.next.Load() + 1
				got, first := f.pick(t, context.Background()), f.p.all.index(k)
				if got != first {
					moved++
					if f.ends[got].color != f.ends[first].color {
						t.Fatalf("blue %v%%: pick %d moved from endpoint %d to %d, of another color", pct, k, first, got)
					}
				}
				if f.ends[got].color == 0 {
					blue++
				}
			}
			if moved < n/10 {
				t.Fatalf("blue %v%%: only %d of %d picks moved: the test does not exercise the second candidate", pct, moved, n)
			}
			checkShareInternal(t, fmt.Sprintf("blue %v%%, picks from %d: blue", pct, k0), blue, n, blueTotal/total)
		}
	}
}

// TestGroupEnds: every end's range holds exactly the ends of its color, and its position
// there is its own, whether the colors come in runs (no index needed) or interleaved.
func TestGroupEnds(t *testing.T) {
	for _, colors := range [][]int{
		{0}, {1, 1, 1}, {-1, -1}, {0, 0, 1, 1, 1, -1}, {1, -1, -1, 0}, // runs
		{0, 1, 0}, {1, 0, 1, 0, -1, 1}, {-1, 0, -1}, // interleaved
	} {
		var s weightedSet
		for _, c := range colors {
			s.addLoaded(fixedPicker{}, pickEnd{}, c, 1)
		}
		s.finish()
		at := func(pos int32) int {
			if s.group == nil {
				return int(pos)
			}
			return int(s.group[pos])
		}
		for i, e := range s.ends {
			if got := at(e.pos); got != i {
				t.Errorf("colors %v: end %d's position maps to end %d", colors, i, got)
			}
			var inRange []int
			for pos := e.lo; pos < e.hi; pos++ {
				inRange = append(inRange, at(pos))
			}
			var want []int
			for j, c := range colors {
				if c == colors[i] {
					want = append(want, j)
				}
			}
			if fmt.Sprint(inRange) != fmt.Sprint(want) {
				t.Errorf("colors %v: end %d's group holds %v, want %v", colors, i, inRange, want)
			}
		}
	}
}

func checkShareInternal(t *testing.T, what string, got, n int, share float64) {
	t.Helper()
	if want := float64(n) * share; math.Abs(float64(got)-want) >= 2 {
		t.Errorf("%s: %d of %d, want %.2f ±2 (share %.4f)", what, got, n, want, share)
	}
}

// loadTestName is switchyard_weighted built so the test can read its endpoints' loads.
const loadTestName = "switchyard_weighted_loadtest"

var loadTestBalancers sync.Map // target → *wBalancer

type loadTestBuilder struct{}

func (loadTestBuilder) Name() string { return loadTestName }

func (loadTestBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := newBalancer(cc, opts, clockwork.NewRealClock(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	loadTestBalancers.Store(opts.Target.String(), b)
	return b
}

func init() { balancer.Register(loadTestBuilder{}) }

// loads returns every endpoint's requests outstanding and last failure, by instance id, and
// how many are READY.
func (b *wBalancer) loads() (out map[string]int64, failed map[string]bool, ready int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out, failed = map[string]int64{}, map[string]bool{}
	for _, e := range b.list {
		out[e.info.ID] = e.load.outstanding.Load()
		failed[e.info.ID] = e.load.failedAt.Load() != 0
		if e.state.ConnectivityState == connectivity.Ready {
			ready++
		}
	}
	return out, failed, ready
}

// TestDoneBalancesOutstanding: over real gRPC, every call's Done takes off what its Pick
// added: after calls that succeed, fail with a sick code, are cut by a server that stops,
// find it stopped, and streams, every endpoint holds 0 requests. While calls are held on a
// server, its endpoint counts at least those.
func TestDoneBalancesOutstanding(t *testing.T) {
	var hold atomic.Bool
	var held atomic.Int32
	holdOn := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if hold.Load() {
			held.Add(1)
			<-ctx.Done() // the server's Stop cuts it
			return nil, ctx.Err()
		}
		return h(ctx, req)
	}
	sickOn := func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return nil, status.Error(codes.Unavailable, "sick")
	}
	okAddr, _ := testutil.ServeGreeter(t, "ok")
	sickAddr, _ := testutil.ServeGreeter(t, "sick", grpc.UnaryInterceptor(sickOn))
	holdAddr, holdSrv := testutil.ServeGreeter(t, "held", grpc.UnaryInterceptor(holdOn))
	var eps []resolver.Endpoint
	for id, addr := range map[string]string{"ok": okAddr, "sick": sickAddr, "held": holdAddr} {
		eps = append(eps, SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}},
			EndpointInfo{ID: id, Weight: 100, TrafficWeight: 100}))
	}
	r := manual.NewBuilderWithScheme("loadtest")
	r.InitialState(resolver.State{Endpoints: eps})
	cc := testutil.Dial(t, "loadtest:///greeter", grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, loadTestName)))
	cc.Connect()
	client := greeterpb.NewGreeterClient(cc)
	var b *wBalancer
	testutil.Eventually(t, "three READY endpoints", func() bool {
		v, ok := loadTestBalancers.Load("loadtest:///greeter")
		if !ok {
			return false
		}
		b = v.(*wBalancer)
		_, _, ready := b.loads()
		return ready == 3
	})
	t.Cleanup(func() { loadTestBalancers.Delete("loadtest:///greeter") })

	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
		defer cancel()
		_, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
		return err
	}
	// Calls from 8 callers: the sick endpoint's fail.
	var wg sync.WaitGroup
	var failures atomic.Int32
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if call() != nil {
					failures.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failures.Load() == 0 {
		t.Fatal("no call failed: the sick endpoint got none")
	}
	// Streams: open, count, then read to the end.
	var streams []grpc.ServerStreamingClient[greeterpb.HelloReply]
	for range 6 {
		s, err := client.SayHellos(context.Background(), &greeterpb.HelloRequest{Count: 3})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	if out, _, _ := b.loads(); out["ok"]+out["sick"]+out["held"] != 6 {
		t.Errorf("6 streams open: outstanding %v, want 6 in all", out)
	}
	for _, s := range streams {
		for {
			if _, err := s.Recv(); err != nil {
				if err != io.EOF {
					t.Fatalf("stream: %v", err)
				}
				break
			}
		}
	}
	// Calls held on one server, then cut by its Stop; more calls meanwhile and after.
	hold.Store(true)
	stop := make(chan struct{})
	for range 6 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					if i > 20 {
						return
					}
				default:
				}
				_ = call()
			}
		})
	}
	testutil.Eventually(t, "calls held on the held server", func() bool { return held.Load() >= 2 })
	// A call is picked before it reaches the handler: the count is at least what is held.
	h := held.Load()
	if out, _, _ := b.loads(); out["held"] < int64(h) {
		t.Errorf("%d calls in the held server's handler, its endpoint counts %d outstanding", h, out["held"])
	}
	holdSrv.Stop()
	close(stop)
	wg.Wait()

	// The sampler clears a mark a second after the failure: what was marked is collected
	// while waiting.
	failed := map[string]bool{}
	var out map[string]int64
	testutil.Eventually(t, "no request outstanding on any endpoint", func() bool {
		var f map[string]bool
		out, f, _ = b.loads()
		for id, v := range f {
			failed[id] = failed[id] || v
		}
		return out["ok"] == 0 && out["sick"] == 0 && out["held"] == 0
	})
	if !failed["sick"] || !failed["held"] || failed["ok"] {
		t.Errorf("failures noted %v (outstanding %v), want sick and held", failed, out)
	}
}

// BenchmarkSplitAccuracyUnderLoad is BenchmarkSplitAccuracy with the second candidate at
// work: two blue and two green servers, one of each color answering 10× slower (2 ms
// against 0.2 ms), 16 callers, so the fast ones hold fewer calls and take picks from the
// slow ones. It reports blue's share of the calls (blue-%), its distance from the percent
// (error-pp), and the share of each color's calls its slow server got (slow-blue-%,
// slow-green-%; 50 without load-aware picking):
//
//	go test -run '^$' -bench SplitAccuracyUnderLoad -benchtime 50000x ./balancer/
func BenchmarkSplitAccuracyUnderLoad(b *testing.B) {
	delay := func(d time.Duration) grpc.ServerOption {
		return grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			time.Sleep(d)
			return h(ctx, req)
		})
	}
	servers := []struct {
		id    string
		color deploy.Color
		d     time.Duration
	}{
		{"blue-fast", deploy.Blue, 200 * time.Microsecond}, {"blue-slow", deploy.Blue, 2 * time.Millisecond},
		{"green-fast", deploy.Green, 200 * time.Microsecond}, {"green-slow", deploy.Green, 2 * time.Millisecond},
	}
	addrs := map[string]string{}
	for _, s := range servers {
		addrs[s.id], _ = testutil.ServeGreeter(b, s.id, delay(s.d))
	}
	for _, pct := range []float64{1, 10, 50} {
		bw, gw := splitWeights(pct)
		var eps []resolver.Endpoint
		for _, s := range servers {
			tw := bw
			if s.color == deploy.Green {
				tw = gw
			}
			eps = append(eps, SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: addrs[s.id]}}},
				EndpointInfo{ID: s.id, Color: s.color, Channel: "trade", Weight: 100, TrafficWeight: tw}))
		}
		r := manual.NewBuilderWithScheme("splitload")
		r.InitialState(resolver.State{Endpoints: eps})
		cc := testutil.Dial(b, "splitload:///greeter", grpc.WithResolvers(r),
			grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, Name)))
		client := greeterpb.NewGreeterClient(cc)
		seen := map[string]bool{}
		for len(seen) < len(servers) { // every endpoint READY
			resp, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
			if err != nil {
				b.Fatal(err)
			}
			seen[resp.GetInstance()] = true
		}
		b.Run(fmt.Sprintf("blue=%v%%", pct), func(b *testing.B) {
			var mu sync.Mutex
			count := map[string]int{}
			b.SetParallelism(8) // 8 × GOMAXPROCS callers
			b.RunParallel(func(pb *testing.PB) {
				mine := map[string]int{}
				for pb.Next() {
					resp, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{})
					if err != nil {
						b.Error(err)
						return
					}
					mine[resp.GetInstance()]++
				}
				mu.Lock()
				for id, n := range mine {
					count[id] += n
				}
				mu.Unlock()
			})
			n := 0
			for _, c := range count {
				n += c
			}
			blue := count["blue-fast"] + count["blue-slow"]
			share := 100 * float64(blue) / float64(n)
			b.ReportMetric(share, "blue-%")
			b.ReportMetric(math.Abs(share-pct), "error-pp")
			if blue > 0 {
				b.ReportMetric(100*float64(count["blue-slow"])/float64(blue), "slow-blue-%")
			}
			if green := n - blue; green > 0 {
				b.ReportMetric(100*float64(count["green-slow"])/float64(green), "slow-green-%")
			}
		})
		_ = cc.Close()
	}
}
