// Package sticky reads sticky blue/green decisions from OpenTelemetry baggage without
// allocating (DESIGN.md "Stickiness"). traffic writes decisions and the balancer honours
// them; both read them here, so neither depends on the other.
package sticky

import (
	"context"
	"iter"
	"strings"

	"go.opentelemetry.io/otel/baggage"

	"github.com/switchyard-go/switchyard/deploy"
)

// Decision returns the color decided for channel in ctx's baggage. Malformed pairs and
// colors other than blue and green are ignored; the first valid pair for the channel wins.
// It allocates nothing.
func Decision(ctx context.Context, channel string) (deploy.Color, bool) {
	return Lookup(baggage.FromContext(ctx).Member(deploy.BaggageKey).Value(), channel)
}

// Pair is one '&'-separated element of a decision value: Raw as written, and Channel and
// Color when it is a valid <channel>=<color> pair (Color is blue or green; "" when the
// element is malformed or names another color).
type Pair struct {
	Raw, Channel string
	Color        deploy.Color
}

// Pairs yields the elements of a decision value in order. It is the one reading of the
// decision format: Lookup, Redecide and traffic's parsing all go through it. It allocates
// nothing.
func Pairs(value string) iter.Seq[Pair] {
	return func(yield func(Pair) bool) {
		for rest := value; rest != ""; {
			var p Pair
			p.Raw, rest, _ = strings.Cut(rest, "&")
			if k, v, ok := strings.Cut(p.Raw, "="); ok {
				if c := deploy.Color(v); c == deploy.Blue || c == deploy.Green {
					p.Channel, p.Color = k, c
				}
			}
			if !yield(p) {
				return
			}
		}
	}
}

// Lookup finds channel's color in a decision value without allocating: the first valid pair
// for channel wins.
func Lookup(value, channel string) (deploy.Color, bool) {
	for p := range Pairs(value) {
		if p.Color != "" && p.Channel == channel {
			return p.Color, true
		}
	}
	return "", false
}

// Own says that the code serving a request is of Color in the release Channel: lifecycle's
// server interceptor puts it in the context of a request decided for the instance's own
// color, and the balancer, picking for a call made under that context, must not cross to the
// other color of Channel: that would be new code calling old code (DESIGN.md "Faults").
// Build one per (channel, color) and reuse it: WithOwn then allocates only the context.
type Own struct {
	Channel string
	Color   deploy.Color
	// Instance names the instance that marks (lifecycle uses "<app>/<id>"): the balancer
	// notes on the reach board which connections its marked calls used, so what one instance
	// of a process reaches is told apart from what others do.
	Instance string
}

type ownKey struct{}

// WithOwn returns ctx marked as served by o's color.
func WithOwn(ctx context.Context, o *Own) context.Context {
	return context.WithValue(ctx, ownKey{}, o)
}

// OwnOf returns the mark WithOwn put in ctx, or nil.
func OwnOf(ctx context.Context) *Own {
	o, _ := ctx.Value(ownKey{}).(*Own)
	return o
}

// Index is a color's index in per-color arrays: 0 blue, 1 green (anything else counts as
// blue; callers check colors first).
func Index(color deploy.Color) int {
	if color == deploy.Green {
		return 1
	}
	return 0
}

// Redecide returns value with channel's decision set to color: the first valid pair for
// channel is replaced and later ones for it dropped; without one, the pair is appended.
func Redecide(value, channel string, color deploy.Color) string {
	var b strings.Builder
	done := false
	for p := range Pairs(value) {
		raw := p.Raw
		if p.Color != "" && p.Channel == channel {
			if done {
				continue
			}
			raw, done = channel+"="+string(color), true
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(raw)
	}
	if !done {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(channel + "=" + string(color))
	}
	return b.String()
}
