package traffic

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/baggage"

	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/registry"
)

// BaggageKey is the OpenTelemetry baggage member that carries sticky decisions along a call
// chain (DESIGN.md "Stickiness"): its value is <channel>=<color> pairs joined by '&', e.g.
// "trade=blue&pay=green".
const BaggageKey = sticky.BaggageKey

// Decision returns the color decided for channel in ctx's baggage. Malformed pairs and
// colors other than blue and green are ignored; the first valid pair for the channel wins.
// It allocates nothing, whether or not a decision is present.
func Decision(ctx context.Context, channel string) (registry.Color, bool) {
	c, ok := sticky.Decision(ctx, channel)
	return registry.Color(c), ok
}

// ParseDecisions returns every valid channel → color pair of a decision value, ignoring
// malformed ones (the first valid pair of a channel wins). For tools and tests; the
// interceptors use Decision.
func ParseDecisions(value string) map[string]registry.Color {
	out := map[string]registry.Color{}
	for value != "" {
		var pair string
		pair, value, _ = strings.Cut(value, "&")
		k, v, ok := strings.Cut(pair, "=")
		if !ok || registry.ValidateName("channel", k) != nil {
			continue
		}
		if c := registry.Color(v); (c == registry.ColorBlue || c == registry.ColorGreen) && out[k] == "" {
			out[k] = c
		}
	}
	return out
}

// WithDecision returns ctx with channel's decision set to color in its baggage, keeping the
// other channels' decisions and every other baggage member. It replaces an existing decision
// for channel; the client interceptors never do that, they keep what they find.
func WithDecision(ctx context.Context, channel string, color registry.Color) (context.Context, error) {
	if err := registry.ValidateName("channel", channel); err != nil {
		return ctx, fmt.Errorf("traffic: decision: %w", err)
	}
	if color != registry.ColorBlue && color != registry.ColorGreen {
		return ctx, fmt.Errorf("traffic: decision for %q: color %q must be blue or green", channel, color)
	}
	b := baggage.FromContext(ctx)
	decisions := ParseDecisions(b.Member(BaggageKey).Value())
	decisions[channel] = color
	parts := make([]string, 0, len(decisions))
	for _, ch := range slices.Sorted(maps.Keys(decisions)) {
		parts = append(parts, ch+"="+string(decisions[ch]))
	}
	m, err := baggage.NewMemberRaw(BaggageKey, strings.Join(parts, "&"))
	if err != nil {
		return ctx, fmt.Errorf("traffic: decision: %w", err)
	}
	b, err = b.SetMember(m)
	if err != nil {
		// Over W3C's limits (64 members, 8192 bytes): keep the request going without it.
		return ctx, fmt.Errorf("traffic: decision: baggage full: %w", err)
	}
	return baggage.ContextWithBaggage(ctx, b), nil
}
