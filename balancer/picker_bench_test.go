package balancer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/balancer"

	"github.com/switchyard-go/switchyard/internal/sticky"
)

type fixedPicker struct{ res balancer.PickResult }

func (p fixedPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) { return p.res, nil }

// benchPicker is a picker over n endpoints, half blue and half green, with distinct weights,
// built the way the balancer builds it.
func benchPicker(n int) *picker {
	p := &picker{next: new(atomic.Uint64), channel: "trade", fallbacks: noop.Int64Counter{},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	done := func(balancer.DoneInfo) {}
	for i := 0; i < n; i++ {
		w := float64(1 + i%7)
		p.all.add(fixedPicker{}, done, w)
		p.byColor[i%2].add(fixedPicker{}, done, w)
	}
	return p
}

// BenchmarkPick: one Pick, without a sticky decision and with one (the color filter).
func BenchmarkPick(b *testing.B) {
	m, _ := baggage.NewMemberRaw(sticky.BaggageKey, "trade=green")
	bg, _ := baggage.New(m)
	decided := baggage.ContextWithBaggage(context.Background(), bg)
	for _, n := range []int{10, 100, 1000} {
		p := benchPicker(n)
		for name, ctx := range map[string]context.Context{"undecided": context.Background(), "sticky": decided} {
			b.Run(fmt.Sprintf("endpoints=%d/%s", n, name), func(b *testing.B) {
				info := balancer.PickInfo{FullMethodName: "/m", Ctx: ctx}
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if _, err := p.Pick(info); err != nil {
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
		s.add(fixedPicker{}, nil, w)
	}
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
		z.add(fixedPicker{}, nil, 0)
	}
	counts = make([]int, 3)
	for k := uint64(0); k < 3000; k++ {
		counts[z.index(k)]++
	}
	if counts[0] != 1000 || counts[1] != 1000 || counts[2] != 1000 {
		t.Errorf("all-zero weights: %v, want an even split", counts)
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts; see BenchmarkPick")
	}
	p := benchPicker(100)
	info := balancer.PickInfo{Ctx: context.Background()}
	if n := testing.AllocsPerRun(1000, func() { _, _ = p.Pick(info) }); n != 0 {
		t.Fatalf("Pick allocates %v times", n)
	}
}
