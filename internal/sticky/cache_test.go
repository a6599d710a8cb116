package sticky

import (
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"go.opentelemetry.io/otel/baggage"

	"github.com/switchyard-go/switchyard/deploy"
)

// bag is baggage with value as the decision member (none if value is "-") and, if other is
// set, a second member; ok is false if otel refuses it.
func bag(value, other string) (baggage.Baggage, bool) {
	var ms []baggage.Member
	if value != "-" {
		m, err := baggage.NewMemberRaw(deploy.BaggageKey, value)
		if err != nil {
			return baggage.Baggage{}, false
		}
		ms = append(ms, m)
	}
	if other != "" {
		m, err := baggage.NewMemberRaw("other", other)
		if err != nil {
			return baggage.Baggage{}, false
		}
		ms = append(ms, m)
	}
	b, err := baggage.New(ms...)
	return b, err == nil
}

// want is what the cache must answer: Lookup of the decision value.
func want(b baggage.Baggage, channel string) (deploy.Color, bool) {
	return Lookup(b.Member(deploy.BaggageKey).Value(), channel)
}

func check(t testing.TB, c *Cache, b baggage.Baggage, what string) {
	t.Helper()
	gc, gok := c.Decision(b)
	wc, wok := want(b, c.Channel())
	if gc != wc || gok != wok {
		t.Fatalf("%s: Cache(%s).Decision(%q) = %q, %v; Lookup says %q, %v",
			what, c.Channel(), b.Member(deploy.BaggageKey).Value(), gc, gok, wc, wok)
	}
}

// TestCacheReadsTheBaggageMap: the cache reads otel's Baggage as one map. If an otel upgrade
// changes that, the cache turns itself off (every decision computed) and this fails.
func TestCacheReadsTheBaggageMap(t *testing.T) {
	if !cacheable {
		t.Fatal("baggage.Baggage is no longer a struct of one map: the decision cache is off")
	}
	b, _ := bag("trade=blue", "")
	if got, want := *(*unsafe.Pointer)(unsafe.Pointer(&b)), reflect.ValueOf(b).Field(0).UnsafePointer(); got != want {
		t.Fatalf("read the map at %p, reflect says %p", got, want)
	}
}

// values are decision values built from pieces that matter to Lookup: the channel, other
// channels, both colors, other colors, separators, duplicates, malformed pairs.
func randomValue(rng *rand.Rand) string {
	pieces := []string{"trade=blue", "trade=green", "trade=red", "pay=blue", "pay=green",
		"trade", "trade=", "=blue", "tradex=green", "trad=blue", "trade=bluex", "trade=Blue", ""}
	n := 1 + rng.IntN(4)
	parts := make([]string, n)
	for i := range parts {
		parts[i] = pieces[rng.IntN(len(pieces))]
	}
	return strings.Join(parts, "&")
}

// TestCacheAgreesWithLookup: over many baggages, made and dropped while the collector runs (so
// new maps take the addresses of dropped ones), repeated and interleaved, for two channels,
// the cache answers exactly what Lookup does. A slot keeps the map it remembers alive, so an
// address it remembers is never another baggage's (a cache that kept only the address failed
// here within 20 ms: it answered for a dropped baggage).
func TestCacheAgreesWithLookup(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	caches := []*Cache{NewCache("trade"), NewCache("pay")}
	live := make([]baggage.Baggage, 200)
	fresh := func() baggage.Baggage {
		for {
			v := randomValue(rng)
			if rng.IntN(10) == 0 {
				v = "-"
			}
			other := ""
			if rng.IntN(4) == 0 {
				other = "x"
			}
			if b, ok := bag(v, other); ok {
				return b
			}
		}
	}
	for i := range live {
		live[i] = fresh()
	}
	for step := 0; step < 60_000; step++ {
		i := rng.IntN(len(live))
		if rng.IntN(3) == 0 {
			live[i] = fresh() // the old one is garbage now
		}
		check(t, caches[rng.IntN(2)], live[i], "random")
		if step%3000 == 0 {
			runtime.GC()
		}
	}
	check(t, caches[0], baggage.Baggage{}, "empty baggage")
}

// TestCacheConcurrent: many goroutines share one cache and a few baggages, some recurring,
// some made per call (run with -race).
func TestCacheConcurrent(t *testing.T) {
	c := NewCache("trade")
	shared := make([]baggage.Baggage, 8)
	for i := range shared {
		shared[i], _ = bag([...]string{"trade=blue", "trade=green", "pay=green"}[i%3], "")
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 5000 {
				b := shared[rng.IntN(len(shared))]
				if rng.IntN(4) == 0 {
					var ok bool
					if b, ok = bag(randomValue(rng), ""); !ok {
						continue
					}
				}
				gc, gok := c.Decision(b)
				if wc, wok := want(b, "trade"); gc != wc || gok != wok {
					t.Errorf("Decision(%q) = %q, %v; Lookup says %q, %v", b.Member(deploy.BaggageKey).Value(), gc, gok, wc, wok)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestCacheAllocatesNothing(t *testing.T) {
	c := NewCache("trade")
	b1, _ := bag("trade=blue", "")
	b2, _ := bag("trade=green", "")
	if n := testing.AllocsPerRun(1000, func() { c.Decision(b1); c.Decision(b2) }); n != 0 {
		t.Fatalf("Decision allocates %v times", n)
	}
}

// FuzzCacheDecision: for any two decision values, interleaved through one cache, with fresh
// and recurring baggages, the cache answers what Lookup does.
func FuzzCacheDecision(f *testing.F) {
	f.Add("trade=blue", "trade=green")
	f.Add("pay=blue&trade=green", "trade=red&trade=blue")
	f.Add("", "trade")
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		b1, ok1 := bag(v1, "")
		b2, ok2 := bag(v2, "")
		if !ok1 || !ok2 {
			t.Skip()
		}
		for _, ch := range []string{"trade", "pay"} {
			c := NewCache(ch)
			for range 3 {
				check(t, c, b1, "first")
				check(t, c, b2, "second")
				b3, _ := bag(v1, "")
				check(t, c, b3, "first, rebuilt")
			}
		}
	})
}
