package traffic

import (
	"context"
	"reflect"
	"strings"

	"go.opentelemetry.io/otel/baggage"
	"google.golang.org/grpc/metadata"
)

// The interceptors' common cases add the same values to many contexts: the baggage of a
// decision, and outgoing metadata holding only its header. gRPC's and OpenTelemetry's setters
// allocate two objects per value per call (a context and the boxed value), and their getters
// copy what they return. carried adds prebuilt values with one allocation; ctxKeys reads
// values without copying them.

// ctxKeys are the context keys under which gRPC keeps outgoing and incoming metadata and
// OpenTelemetry keeps baggage. Their types are unexported, so they are learnt once, by
// handing each package's own getter a context that records the key it is asked for, and
// checked against the matching setter; a key that does not check out is nil, and the
// interceptors then use the public API (and allocate as it does).
type ctxKeys struct {
	out, in, bag any
	// outRaw says that the outgoing value is gRPC's (map, appended pairs) pair as read by
	// outgoingIs; false makes outgoingIs report false.
	outRaw bool
}

var keys = learnKeys()

// keyProbe is a context that records the keys it is asked for.
type keyProbe struct {
	context.Context
	asked []any
}

func (p *keyProbe) Value(key any) any {
	p.asked = append(p.asked, key)
	return nil
}

// probeKey returns the one key read asks its context for, or nil.
func probeKey(read func(context.Context)) any {
	p := &keyProbe{Context: context.Background()}
	read(p)
	if len(p.asked) != 1 {
		return nil
	}
	return p.asked[0]
}

func learnKeys() ctxKeys {
	var k ctxKeys
	bg := context.Background()
	md := metadata.MD{"k": {"v"}}
	if key := probeKey(func(ctx context.Context) { metadata.ValueFromOutgoingContext(ctx, "k") }); key != nil &&
		bg.Value(key) == nil && metadata.NewOutgoingContext(bg, md).Value(key) != nil {
		k.out = key
		k.outRaw = rawOutgoingIs(metadata.NewOutgoingContext(bg, md).Value(key), md) &&
			!rawOutgoingIs(metadata.AppendToOutgoingContext(metadata.NewOutgoingContext(bg, md), "a", "b").Value(key), md) &&
			!rawOutgoingIs(metadata.NewOutgoingContext(bg, metadata.MD{"k": {"v"}}).Value(key), md)
	}
	if key := probeKey(func(ctx context.Context) { metadata.ValueFromIncomingContext(ctx, "k") }); key != nil {
		if got, ok := metadata.NewIncomingContext(bg, md).Value(key).(metadata.MD); ok && len(got["k"]) == 1 && got["k"][0] == "v" {
			k.in = key
		}
	}
	m, _ := baggage.NewMemberRaw("k", "v")
	b, _ := baggage.New(m)
	if key := probeKey(func(ctx context.Context) { baggage.FromContext(ctx) }); key != nil &&
		bg.Value(key) == nil && baggage.ContextWithBaggage(bg, b).Value(key) != nil {
		k.bag = key
	}
	return k
}

// rawOutgoingIs reports whether v, gRPC's outgoing metadata value, is exactly md with nothing
// appended: a struct of md's map and an empty slice of appended pairs.
func rawOutgoingIs(v any, md metadata.MD) bool {
	r := reflect.ValueOf(v)
	if r.Kind() != reflect.Struct || r.NumField() != 2 {
		return false
	}
	m, added := r.Field(0), r.Field(1)
	return m.Kind() == reflect.Map && added.Kind() == reflect.Slice &&
		m.Pointer() == reflect.ValueOf(md).Pointer() && added.Len() == 0
}

// hasOutgoing reports whether ctx has outgoing metadata; ok is false when that is unknown.
func hasOutgoing(ctx context.Context) (has, ok bool) {
	if keys.out == nil {
		return false, false
	}
	return ctx.Value(keys.out) != nil, true
}

// hasBaggage reports whether ctx has OpenTelemetry baggage state (empty baggage included);
// ok is false when that is unknown.
func hasBaggage(ctx context.Context) (has, ok bool) {
	if keys.bag == nil {
		return false, false
	}
	return ctx.Value(keys.bag) != nil, true
}

// outgoingIs reports whether ctx's outgoing metadata is exactly md (the same map, nothing
// appended): false when it is not, or cannot be told without copying.
func outgoingIs(ctx context.Context, md metadata.MD) bool {
	return keys.outRaw && rawOutgoingIs(ctx.Value(keys.out), md)
}

// incomingValues returns the values of key (lower case) in ctx's incoming metadata, as
// metadata.ValueFromIncomingContext does but without copying them: the caller must not change
// them.
func incomingValues(ctx context.Context, key string) []string {
	if keys.in == nil {
		return metadata.ValueFromIncomingContext(ctx, key)
	}
	md, _ := ctx.Value(keys.in).(metadata.MD)
	if v, ok := md[key]; ok {
		return v
	}
	for k, v := range md { // metadata not made by gRPC's helpers may have other cases
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return nil
}

// carried is parent with the values of vals, a context built on context.Background once for
// many calls (a decision's baggage, outgoing metadata holding its header), in front of
// parent's. It is valid only where parent has no value under vals' keys, so that what it
// answers is what the setters would have made.
type carried struct {
	context.Context
	vals context.Context
}

func (c *carried) Value(key any) any {
	if v := c.vals.Value(key); v != nil {
		return v
	}
	return c.Context.Value(key)
}

func (c *carried) String() string { return "traffic.carried" }
