package shiftbench_test

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

var sizes = flag.String("shiftbench.sizes", "200x20,1000x50",
	"fleets BenchmarkShift measures: instances x consumers, comma-separated (instances a multiple of 4, at least 2 consumers)")

// TestMain closes the fleet the benchmarks keep between their runs, then checks for leaked
// goroutines.
func TestMain(m *testing.M) {
	code := m.Run()
	closeCached()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestShiftSmoke is the harness at its smallest, in both modes: every shift reaches every
// consumer, each consumer's picker then splits undecided picks as the rule says, and the
// figures are sane.
func TestShiftSmoke(t *testing.T) {
	for _, rules := range []bool{false, true} {
		cfg := config{n: 8, m: 2, rules: rules}
		t.Run(cfg.String(), func(t *testing.T) {
			if rules && !rulesAvailable() {
				t.Skip(errNoRules)
			}
			ctx := context.Background()
			f, err := newFleet(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(f.close)
			for k, percent := range []float64{20, 80} {
				res, err := f.shift(ctx, percent)
				if err != nil {
					t.Fatal(err)
				}
				if res.applied > res.settled || res.cpu <= 0 || len(res.pickers) != cfg.m {
					t.Errorf("shift %d: implausible result %+v", k, res)
				}
				for j, c := range f.cons {
					if res.pickers[j] < 1 {
						t.Errorf("shift %d: consumer %d sent no picker", k, j)
					}
					// F(21) picks: the Weyl sequence gives each endpoint its share ±2 picks.
					got, err := c.probe.blueShare(10_946)
					if err != nil {
						t.Fatal(err)
					}
					if math.Abs(got-percent/100) > 0.01 {
						t.Errorf("shift %d to %g%%: consumer %d sends %.2f%% of undecided picks to blue", k, percent, j, 100*got)
					}
				}
			}
		})
	}
}

// BenchmarkShift measures shift-to-applied (see the package doc). b.N is the number of
// shifts; use -benchtime Nx. The fleet is built once per sub-benchmark, outside the timer.
func BenchmarkShift(b *testing.B) {
	for _, size := range strings.Split(*sizes, ",") {
		var n, m int
		if _, err := fmt.Sscanf(size, "%dx%d", &n, &m); err != nil {
			b.Fatalf("shiftbench: -shiftbench.sizes %q: want instances x consumers, e.g. 200x20,1000x50", *sizes)
		}
		for _, rules := range []bool{false, true} {
			cfg := config{n: n, m: m, rules: rules}
			b.Run(cfg.String(), func(b *testing.B) {
				if rules && !rulesAvailable() {
					b.Skip(errNoRules)
				}
				benchShift(b, cfg)
			})
		}
	}
}

func benchShift(b *testing.B, cfg config) {
	ctx := context.Background()
	f, err := cachedFleet(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	var applied, settled []time.Duration
	var cpu time.Duration
	pickers, maxPickers := 0, 0
	b.ResetTimer()
	for i := range b.N {
		res, err := f.shift(ctx, float64(20+60*(i%2)))
		if err != nil {
			b.Fatal(err)
		}
		applied, settled = append(applied, res.applied), append(settled, res.settled)
		cpu += res.cpu
		for _, n := range res.pickers {
			pickers += n
		}
		maxPickers = max(maxPickers, slices.Max(res.pickers))
	}
	b.StopTimer()
	// The fleet ends at 80 %, as it began, so the next run starts from the same split.
	if b.N%2 == 1 {
		if _, err := f.shift(ctx, 80); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(ms(percentile(applied, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(applied, 99)), "p99-ms")
	b.ReportMetric(ms(percentile(settled, 50)), "settle-p50-ms")
	b.ReportMetric(ms(cpu)/float64(b.N), "cpu-ms/shift")
	b.ReportMetric(float64(pickers)/float64(b.N*cfg.m), "pickers/conn/shift")
	b.Logf("%v: %d shifts: applied p50 %v p99 %v max %v; settled p50 %v max %v; CPU %v/shift; pickers per connection and shift: mean %.1f, max %d",
		cfg, b.N, percentile(applied, 50).Round(time.Millisecond), percentile(applied, 99).Round(time.Millisecond),
		slices.Max(applied).Round(time.Millisecond), percentile(settled, 50).Round(time.Millisecond),
		slices.Max(settled).Round(time.Millisecond), (cpu / time.Duration(b.N)).Round(time.Millisecond),
		float64(pickers)/float64(b.N*cfg.m), maxPickers)
}

// The benchmark framework calls a benchmark once with b.N = 1 and again with the b.N asked
// for; the fleet of the last configuration is kept in between (building 1,000×50 takes a
// while) and closed when another is asked for, or by TestMain.
var cache struct {
	sync.Mutex
	cfg config
	f   *fleet
}

func cachedFleet(ctx context.Context, cfg config) (*fleet, error) {
	cache.Lock()
	defer cache.Unlock()
	if cache.f != nil && cache.cfg == cfg {
		return cache.f, nil
	}
	if cache.f != nil {
		cache.f.close()
		cache.f = nil
	}
	f, err := newFleet(ctx, cfg)
	if err != nil {
		return nil, err
	}
	cache.cfg, cache.f = cfg, f
	return f, nil
}

func closeCached() {
	cache.Lock()
	defer cache.Unlock()
	if cache.f != nil {
		cache.f.close()
		cache.f = nil
	}
}
