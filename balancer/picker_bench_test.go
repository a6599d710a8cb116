package balancer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/sticky"
)

type fixedPicker struct{ res balancer.PickResult }

func (p fixedPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) { return p.res, nil }

// The loads of benchPicker's endpoints. The benchmarks call no Done, so each pick leaves one
// more request outstanding; a start far below 0 or far above 2 keeps the endpoints idle or
// loaded for any b.N.
const (
	idle   = -1 << 62 // never 2 outstanding: every pick takes the first candidate
	loaded = 1 << 40  // every pick draws and compares a second candidate
)

// benchPicker is a picker over n endpoints, half blue and half green, with distinct weights,
// built the way the balancer builds it: the picks of each color count in one cell, every
// endpoint's requests outstanding are counted. With load idle they start far below 0; with
// loaded at load × 1, 3 or 9, so that about a third of the picks move to their second
// candidate. failed: every endpoint failed within the last second, so each second candidate
// is refused.
func benchPicker(n int, load int64, failed bool) *picker {
	p := &picker{next: new(atomic.Uint64), channel: "trade", decisions: sticky.NewCache("trade"), fallbacks: noop.Int64Counter{},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	done := func(balancer.DoneInfo) {}
	cells := [2]*pickCell{{color: deploy.Blue}, {color: deploy.Green}}
	for i := 0; i < n; i++ {
		w := float64(1 + i%7)
		l := new(endpointLoad)
		l.outstanding.Store(load * int64(btoi(load < 0)+btoi(load > 0)*[3]int{1, 3, 9}[i%3]))
		l.latency.Store(math.Float64bits(1e6)) // measured: 1 ms
		if failed {
			l.failedAt.Store(1)
		}
		end := pickEnd{done: done, cell: cells[i%2], load: l, base: w}
		p.all.addLoaded(fixedPicker{}, end, i%2, w)
		p.byColor[i%2].addLoaded(fixedPicker{}, end, i%2, w)
	}
	p.all.finish()
	p.byColor[0].finish()
	p.byColor[1].finish()
	return p
}

// BenchmarkPick: one Pick, without a sticky decision and with one (the color filter): a
// baggage seen before (traffic's interceptors reuse theirs), or each pick one of 1,024
// distinct baggages of the same decision (built per request, as otelgrpc's extraction does:
// the decision cache misses). The endpoints are idle (fewer than 2 requests outstanding:
// one candidate) except in the -loaded cases, where every pick draws and compares a second
// candidate (about a third move), and -loaded-failed, where every second candidate failed
// just now (and is refused).
func BenchmarkPick(b *testing.B) {
	decided := func() context.Context {
		m, _ := baggage.NewMemberRaw(deploy.BaggageKey, "trade=green")
		bg, _ := baggage.New(m)
		return baggage.ContextWithBaggage(context.Background(), bg)
	}
	unseen := make([]balancer.PickInfo, 1024)
	for i := range unseen {
		unseen[i] = balancer.PickInfo{FullMethodName: "/m", Ctx: decided()}
	}
	undecided := []balancer.PickInfo{{FullMethodName: "/m", Ctx: context.Background()}}
	sticky := []balancer.PickInfo{{FullMethodName: "/m", Ctx: decided()}}
	for _, n := range []int{10, 100, 1000, 10_000} {
		p, busy, failed := benchPicker(n, idle, false), benchPicker(n, loaded, false), benchPicker(n, loaded, true)
		for _, c := range []struct {
			name  string
			p     *picker
			infos []balancer.PickInfo
		}{
			{"undecided", p, undecided},
			{"sticky", p, sticky},
			{"sticky-unseen", p, unseen},
			{"undecided-loaded", busy, undecided},
			{"sticky-loaded", busy, sticky},
			{"undecided-loaded-failed", failed, undecided},
		} {
			p := c.p
			b.Run(fmt.Sprintf("endpoints=%d/%s", n, c.name), func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if _, err := p.Pick(c.infos[i%len(c.infos)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestIndexFollowsWeights checks the Weyl-sequence pick against the weights exactly enough
// to catch an off-by-one in the search, and the even split of all-zero weights.
func TestIndexFollowsWeights(t *testing.T) {
	var s weightedSet
	ws := []float64{1, 0, 3, 6}
	for _, w := range ws {
		s.add(fixedPicker{}, nil, nil, w)
	}
	s.finish()
	counts := make([]int, len(ws))
	for k := uint64(0); k < 10_000; k++ {
		counts[s.index(k)]++
	}
	for i, w := range ws {
		if want := int(w * 1000); counts[i] < want-10 || counts[i] > want+10 {
			t.Errorf("endpoint %d (weight %v): %d of 10,000 picks, want %d ±10", i, w, counts[i], want)
		}
	}
	var z weightedSet
	for range 3 {
		z.add(fixedPicker{}, nil, nil, 0)
	}
	z.finish()
	counts = make([]int, 3)
	for k := uint64(0); k < 3000; k++ {
		counts[z.index(k)]++
	}
	if counts[0] != 1000 || counts[1] != 1000 || counts[2] != 1000 {
		t.Errorf("all-zero weights: %v, want an even split", counts)
	}
}

// TestFibonacciWindows checks what the tests of package balancer_test rely on to compare
// pick and call counts with a tolerance that cannot flake: any F(m) consecutive picks, from
// wherever the counter stands, give every endpoint F(m) × its weight share ±2 (not
// reaching 2). The reason: the pick sequence is k·α mod 1, α = 0x9E3779B97F4A7C15 / 2^64,
// whose continued fraction starts [0; 1, 1, …] with 44 ones (checked here), so its
// convergents' denominators are the Fibonacci numbers up to F(45) ≈ 1.1e9. q consecutive points,
// q such a denominator, each lie within 1/q' (q' the next one) of a distinct point of a
// lattice of spacing 1/q, all moved the same way: an interval of length x holds q·x of the
// lattice points ±1, and the move changes that by at most one more.
func TestFibonacciWindows(t *testing.T) {
	r := new(big.Rat).SetFrac(new(big.Int).SetUint64(0x9E3779B97F4A7C15), new(big.Int).Lsh(big.NewInt(1), 64))
	for i := 0; i <= 44; i++ {
		a := new(big.Int).Quo(r.Num(), r.Denom())
		if want := min(i, 1); a.Cmp(big.NewInt(int64(want))) != 0 {
			t.Fatalf("partial quotient %d of α is %v, want %d", i, a, want)
		}
		r.Sub(r, new(big.Rat).SetInt(a))
		r.Inv(r)
	}

	weights := [][]float64{
		{1, 99}, {10, 90}, {50, 50}, {99, 1}, // a blue percent
		{100.0 / 99, 100}, {100, 100.0 / 99}, // traffic weights at 1 % and 99 %
		{1, 0, 3, 6}, {300, 100}, {100, 0.25}, {100, 101}, {0.01, 1},
		{7, 1, 5, 2, 9, 4, 4, 0.5},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	offsets := []uint64{0, 1, 1 << 32, 1<<63 + 12345, math.MaxUint64 - 100}
	for range 5 {
		offsets = append(offsets, rng.Uint64())
	}
	for _, ws := range weights {
		var s weightedSet
		sum := 0.0
		for _, w := range ws {
			s.add(fixedPicker{}, nil, nil, w)
			sum += w
		}
		s.finish()
		for _, n := range []int{377, 610, 10_946} {
			for _, k0 := range offsets {
				counts := make([]int, len(ws))
				for k := k0 + 1; k != k0+1+uint64(n); k++ {
					counts[s.index(k)]++
				}
				for i, w := range ws {
					if want := float64(n) * w / sum; math.Abs(float64(counts[i])-want) >= 2 {
						t.Errorf("weights %v, %d picks from %d: endpoint %d got %d, want %.2f ±2", ws, n, k0, i, counts[i], want)
					}
				}
			}
		}
	}
}

// TestIndexSurvivesExtremeWeights: weights near MaxFloat64 overflowed the running total to
// +Inf and sent every pick to the last endpoint (issue 12, case 7); tiny ones, NaN, negative
// and infinite weights must not misbehave either. The stored weights are scaled by a power
// of two, so every share is exactly that of the raw weights.
func TestIndexSurvivesExtremeWeights(t *testing.T) {
	inf, nan := math.Inf(1), math.NaN()
	for _, c := range []struct {
		weights []float64
		shares  []float64
	}{
		{[]float64{1e308, 1e308}, []float64{0.5, 0.5}},
		{[]float64{math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, math.MaxFloat64}, []float64{0.25, 0.25, 0.25, 0.25}},
		{[]float64{1e308, 3e308 / 2}, []float64{0.4, 0.6}},
		{[]float64{100, 1e308, 1e308}, []float64{0, 0.5, 0.5}}, // 100 is a vanishing share
		{[]float64{5e-324, 5e-324, 1e-323}, []float64{0.25, 0.25, 0.5}},
		{[]float64{1e-300, 3e-300}, []float64{0.25, 0.75}},
		{[]float64{nan, -1, 1, 3}, []float64{0, 0, 0.25, 0.75}}, // not a number, negative: 0
		{[]float64{inf, 1e308}, []float64{math.MaxFloat64 / (math.MaxFloat64 + 1e308), 1e308 / (math.MaxFloat64 + 1e308)}},
	} {
		var s weightedSet
		for _, w := range c.weights {
			s.add(fixedPicker{}, nil, nil, w)
		}
		s.finish()
		if math.IsInf(s.total, 0) || math.IsNaN(s.total) || s.total > float64(s.len()) {
			t.Errorf("weights %v: stored total %v, want finite and at most %d", c.weights, s.total, s.len())
		}
		const n = 10_946
		counts := make([]int, len(c.weights))
		for k := uint64(1); k <= n; k++ {
			counts[s.index(k)]++
		}
		for i, share := range c.shares {
			if want := n * share; math.Abs(float64(counts[i])-want) >= 2 {
				t.Errorf("weights %v: endpoint %d got %d of %d picks, want %.2f ±2", c.weights, i, counts[i], n, want)
			}
		}
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts; see BenchmarkPick")
	}
	decided := func(value string) balancer.PickInfo {
		m, _ := baggage.NewMemberRaw(deploy.BaggageKey, value)
		bg, _ := baggage.New(m)
		return balancer.PickInfo{Ctx: baggage.ContextWithBaggage(context.Background(), bg)}
	}
	unseen := make([]balancer.PickInfo, 256) // more than the decision cache holds
	for i := range unseen {
		unseen[i] = decided([...]string{"trade=blue", "trade=green", "pay=blue"}[i%3])
	}
	for _, load := range []struct {
		name   string
		load   int64
		failed bool
	}{{"idle", idle, false}, {"loaded", loaded, false}, {"loaded, failed", loaded, true}} {
		p := benchPicker(100, load.load, load.failed)
		for name, infos := range map[string][]balancer.PickInfo{
			"undecided":                 {{Ctx: context.Background()}},
			"sticky, baggage seen":      {decided("trade=blue"), decided("trade=green")},
			"sticky, baggage each time": unseen,
		} {
			i := 0
			if n := testing.AllocsPerRun(1000, func() { _, _ = p.Pick(infos[i%len(infos)]); i++ }); n != 0 {
				t.Errorf("%s endpoints, %s: Pick allocates %v times", load.name, name, n)
			}
		}
	}
}

// searchAll is the pick before the guide table: a binary search over all of cum.
func searchAll(s *weightedSet, k uint64) int {
	k *= 0x9E3779B97F4A7C15
	x := float64(k>>11) / (1 << 53) * s.total
	lo, hi := 0, len(s.cum)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s.cum[mid] > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// TestGuideTableFindsWhatBinarySearchFinds: the O(1) pick maps every point to the endpoint a
// binary search over all the cumulative weights maps it to, so the shares and the
// Fibonacci-window accuracy above are unchanged, whatever the weights: uniform, skewed (one
// bucket holding thousands of endpoints), extreme, with zeros at the ends.
func TestGuideTableFindsWhatBinarySearchFinds(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cases := map[string][]float64{
		"extreme":     {1e308, 5e-324, math.MaxFloat64, 0, 1e-300, math.Inf(1), 3},
		"zeros":       {0, 0, 5, 0, 0, 1, 0, 0},
		"one":         {42},
		"ends":        {0, 1, 0},
		"skewed":      nil,
		"uniform":     nil,
		"exponential": nil,
	}
	for i := 0; i < 10_000; i++ {
		cases["skewed"] = append(cases["skewed"], float64(1+999_999*btoi(i == 5000)))
		cases["uniform"] = append(cases["uniform"], rng.Float64()*100)
		cases["exponential"] = append(cases["exponential"], math.Ldexp(1, -rng.IntN(60)))
	}
	for name, ws := range cases {
		var s weightedSet
		for _, w := range ws {
			s.add(fixedPicker{}, nil, nil, w)
		}
		s.finish()
		ks := []uint64{0, 1, math.MaxUint64, 1 << 63}
		for range 200_000 {
			ks = append(ks, rng.Uint64())
		}
		for _, k := range ks {
			if got, want := s.index(k), searchAll(&s, k); got != want {
				t.Fatalf("%s: pick %d: endpoint %d, binary search says %d", name, k, got, want)
			}
		}
	}
}

// TestStickyPickFollowsLookup: through the decision cache, with baggages made, repeated and
// dropped while the collector runs, every pick goes to the color sticky.Lookup reads from
// the baggage, and an undecided one to the whole set.
func TestStickyPickFollowsLookup(t *testing.T) {
	p := &picker{next: new(atomic.Uint64), channel: "trade", decisions: sticky.NewCache("trade"),
		fallbacks: noop.Int64Counter{}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	answer := func(s string) fixedPicker {
		return fixedPicker{balancer.PickResult{Metadata: metadata.Pairs("set", s)}}
	}
	for i := range 4 {
		p.all.add(answer("all"), nil, nil, 1)
		p.byColor[i%2].add(answer(string([...]deploy.Color{deploy.Blue, deploy.Green}[i%2])), nil, nil, 1)
	}
	p.all.finish()
	p.byColor[0].finish()
	p.byColor[1].finish()
	values := []string{"trade=blue", "trade=green", "pay=green", "trade=red&trade=green",
		"pay=blue&trade=blue", "trade", "tradex=blue", "trade=blue&trade=green"}
	rng := rand.New(rand.NewPCG(8, 9))
	live := make([]context.Context, 64)
	for step := range 20_000 {
		i := rng.IntN(len(live))
		if live[i] == nil || rng.IntN(3) == 0 {
			m, _ := baggage.NewMemberRaw(deploy.BaggageKey, values[rng.IntN(len(values))])
			bg, _ := baggage.New(m)
			live[i] = baggage.ContextWithBaggage(context.Background(), bg)
		}
		res, err := p.Pick(balancer.PickInfo{Ctx: live[i]})
		if err != nil {
			t.Fatal(err)
		}
		value := baggage.FromContext(live[i]).Member(deploy.BaggageKey).Value()
		want := "all"
		if c, ok := sticky.Lookup(value, "trade"); ok {
			want = string(c)
		}
		if got := res.Metadata.Get("set"); len(got) != 1 || got[0] != want {
			t.Fatalf("baggage %q: picked from %v, want %s", value, got, want)
		}
		if step%2000 == 0 {
			runtime.GC()
		}
	}
}
