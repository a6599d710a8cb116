// Package sticky reads sticky blue/green decisions from OpenTelemetry baggage without
// allocating (DESIGN.md "Stickiness"). traffic writes decisions and the balancer honours
// them; both read them here, so neither depends on the other.
package sticky

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/baggage"
)

// BaggageKey is the baggage member that carries decisions: <channel>=<color> pairs joined
// by '&', e.g. "trade=blue&pay=green".
const BaggageKey = "x-deploy-channel-type"

// The colors a decision can name.
const (
	Blue  = "blue"
	Green = "green"
)

// Decision returns the color decided for channel in ctx's baggage. Malformed pairs and
// colors other than blue and green are ignored; the first valid pair for the channel wins.
// It allocates nothing.
func Decision(ctx context.Context, channel string) (string, bool) {
	return Lookup(baggage.FromContext(ctx).Member(BaggageKey).Value(), channel)
}

// Lookup finds channel's color in a decision value without allocating.
func Lookup(value, channel string) (string, bool) {
	for value != "" {
		var pair string
		pair, value, _ = strings.Cut(value, "&")
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k != channel {
			continue
		}
		if v == Blue || v == Green {
			return v, true
		}
	}
	return "", false
}
