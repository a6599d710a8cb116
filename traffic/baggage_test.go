package traffic_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/baggage"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
)

// withValue returns a context whose baggage holds the decision member with a raw value.
func withValue(t testing.TB, value string) context.Context {
	t.Helper()
	m, err := baggage.NewMemberRaw(deploy.BaggageKey, value)
	if err != nil {
		t.Fatal(err)
	}
	b, err := baggage.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return baggage.ContextWithBaggage(context.Background(), b)
}

func TestDecisionLookup(t *testing.T) {
	cases := []struct {
		value, channel string
		want           deploy.Color
		ok             bool
	}{
		{"trade=blue&pay=green", "trade", deploy.Blue, true},
		{"trade=blue&pay=green", "pay", deploy.Green, true},
		{"trade=blue&pay=green", "ship", "", false},
		{"trade=red&trade=green", "trade", deploy.Green, true}, // invalid color ignored
		{"&&trade&=blue&trade=blue", "trade", deploy.Blue, true},
		{"trade=blue&trade=green", "trade", deploy.Blue, true}, // first wins
		{"tradex=blue", "trade", "", false},
		{"trade=BLUE", "trade", "", false},
		{"", "trade", "", false},
	}
	for _, c := range cases {
		got, ok := traffic.Decision(withValue(t, c.value), c.channel)
		if got != c.want || ok != c.ok {
			t.Errorf("Decision(%q, %q) = %q, %v; want %q, %v", c.value, c.channel, got, ok, c.want, c.ok)
		}
	}
	if _, ok := traffic.Decision(context.Background(), "trade"); ok {
		t.Error("decision found in an empty context")
	}
}

func TestWithDecisionKeepsOtherMembers(t *testing.T) {
	other, _ := baggage.NewMemberRaw("tenant", "acme")
	b, _ := baggage.New(other)
	ctx := baggage.ContextWithBaggage(context.Background(), b)
	ctx, err := traffic.WithDecision(ctx, "pay", deploy.Green)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err = traffic.WithDecision(ctx, "trade", deploy.Blue)
	if err != nil {
		t.Fatal(err)
	}
	got := baggage.FromContext(ctx)
	if got.Member("tenant").Value() != "acme" || got.Member(deploy.BaggageKey).Value() != "pay=green&trade=blue" {
		t.Fatalf("baggage = %s", got)
	}
	if _, err := traffic.WithDecision(ctx, "trade", "red"); err == nil {
		t.Fatal("WithDecision accepted color red")
	}
	if _, err := traffic.WithDecision(ctx, "a=b", deploy.Blue); err == nil {
		t.Fatal("WithDecision accepted channel a=b")
	}
	// The wire form parses back to the same decisions.
	parsed, err := baggage.Parse(got.String())
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := traffic.Decision(baggage.ContextWithBaggage(context.Background(), parsed), "trade"); !ok || c != deploy.Blue {
		t.Fatalf("after a round trip through the header: %q %v (header %q)", c, ok, got.String())
	}
}

func TestDecisionAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts; see BenchmarkDecision")
	}
	present := withValue(t, "pay=green&trade=blue")
	absent := context.Background()
	for name, ctx := range map[string]context.Context{"present": present, "absent": absent} {
		if n := testing.AllocsPerRun(1000, func() { traffic.Decision(ctx, "trade") }); n != 0 {
			t.Errorf("Decision with the decision %s: %v allocs, want 0", name, n)
		}
	}
}

// FuzzDecision: any header value parses without panicking, and Decision agrees with
// ParseDecisions for every channel it reports.
func FuzzDecision(f *testing.F) {
	for _, s := range []string{"trade=blue&pay=green", "trade=blue", "=&=", "a=blue&a=green", "trade=%62lue", "x=blue;prop=1", "trade=blue,other=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		// What arrives on the wire is a whole baggage header.
		b, _ := baggage.Parse(deploy.BaggageKey + "=" + header)
		ctx := baggage.ContextWithBaggage(context.Background(), b)
		value := b.Member(deploy.BaggageKey).Value()
		for ch, color := range traffic.ParseDecisions(value) {
			got, ok := traffic.Decision(ctx, ch)
			if !ok || got != color {
				t.Fatalf("value %q: ParseDecisions says %s=%s, Decision says %q %v", value, ch, color, got, ok)
			}
			if _, err := traffic.WithDecision(ctx, ch, color); err != nil && len(header) < 4000 {
				t.Fatalf("cannot re-add a parsed decision %s=%s: %v", ch, color, err)
			}
		}
	})
}

func BenchmarkDecision(b *testing.B) {
	present := withValue(b, "pay=green&trade=blue")
	for name, ctx := range map[string]context.Context{"present": present, "absent": context.Background()} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				traffic.Decision(ctx, "trade")
			}
		})
	}
}
