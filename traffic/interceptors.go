package traffic

import (
	"context"
	"hash/maphash"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/baggage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/streamctx"
)

// baggageHeader is the W3C baggage header, as gRPC metadata keys are lower case.
const baggageHeader = "baggage"

// UnaryClientInterceptor makes and carries sticky decisions on calls to switchyard:///<app>
// targets (DESIGN.md "Stickiness"): if app is in a channel with a release open and the call's
// context carries no decision for that channel, it decides blue with probability
// BluePercent/100 and adds the decision to the context's baggage; a decision already there
// is kept. It then writes the context's baggage to the call's `baggage` header, replacing any
// earlier one, so the header goes out exactly once whether or not an OpenTelemetry
// propagator or otelgrpc stats handler is installed (otelgrpc also replaces it, with the same
// content). A call with no baggage and no open channel is passed through untouched.
func (c *Rules) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(c.stick(ctx, cc.Target()), method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor is UnaryClientInterceptor for streams.
func (c *Rules) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(c.stick(ctx, cc.Target()), desc, cc, method, opts...)
	}
}

// stick returns ctx with the decision for target's channel made if needed, and the baggage
// written to the outgoing metadata. The common cases take no lock and build nothing: a call
// that decides with no other baggage takes the decided baggage and its header from the rule
// snapshot (built once per rule change), and a call whose baggage is a decision alone takes
// the header from the snapshot or the Client's header cache. Only the context carrying them
// is new, one allocation (carried), and nothing at all when the outgoing metadata already is
// that header alone.
func (c *Rules) stick(ctx context.Context, target string) context.Context {
	b := baggage.FromContext(ctx)
	m := b.Member(deploy.BaggageKey) // read once: each read builds it
	s := c.snap.Load()
	if app, ok := appOf(target); ok {
		if ch, open := s.open[app]; open {
			if _, decided := sticky.Lookup(m.Value(), ch); !decided {
				color := deploy.Green
				if c.random()*100 < s.rules[ch].BluePercent {
					color = deploy.Blue
				}
				if d, ok := s.decided[ch]; ok && b.Len() == 0 {
					d := d[sticky.Index(color)]
					hasB, okB := hasBaggage(ctx)
					if hasO, okO := hasOutgoing(ctx); okB && okO && !hasB && !hasO {
						return &carried{Context: ctx, vals: d.vals}
					}
					return withHeader(baggage.ContextWithBaggage(ctx, d.b), d.header)
				}
				if dctx, err := WithDecision(ctx, ch, color); err == nil {
					ctx, b = dctx, baggage.FromContext(dctx)
					m = b.Member(deploy.BaggageKey)
				} else {
					c.cfg.Logger.Debug("traffic: decision not carried", "channel", ch, "err", err)
				}
			}
		}
	}
	switch b.Len() {
	case 0:
		return ctx
	case 1:
		if h := c.decisionHeader(s, b, m); h != nil {
			return withHeader(ctx, h)
		}
	}
	return withBaggageHeader(ctx, b)
}

// decided is the baggage of one decision alone and its header, and vals a context holding
// both (the baggage, and outgoing metadata of the header alone) for carried.
type decided struct {
	b      baggage.Baggage
	header *header
	vals   context.Context
}

func newDecided(b baggage.Baggage) decided {
	h := newHeader(b.String())
	return decided{b: b, header: h, vals: metadata.NewOutgoingContext(baggage.ContextWithBaggage(context.Background(), b), h.md)}
}

// header is a baggage header and outgoing metadata holding only it, shared by every call
// that sends it (gRPC and otelgrpc copy outgoing metadata before changing it), and vals a
// context holding that metadata for carried.
type header struct {
	value string
	md    metadata.MD
	vals  context.Context
}

func newHeader(value string) *header {
	md := metadata.MD{baggageHeader: {value}}
	return &header{value: value, md: md, vals: metadata.NewOutgoingContext(context.Background(), md)}
}

// decisionHeader returns the header of b when b is one decision member (m) without
// properties that fits the limits: from the snapshot for a single decision of an open channel,
// else from the Client's cache (computed on a miss); nil otherwise.
func (c *Rules) decisionHeader(s *snapshot, b baggage.Baggage, m baggage.Member) *header {
	if m.Key() == "" || len(m.Properties()) > 0 {
		return nil
	}
	v := m.Value()
	if h, ok := s.headers[v]; ok {
		return h
	}
	if h, ok := c.headers.get(v); ok {
		return h
	}
	if len(v) > maxCachedBytes {
		return nil
	}
	var h *header
	if value := b.String(); len(value) <= MaxBaggageMemberBytes { // else the limits path decides
		h = newHeader(value)
	}
	c.headers.put(v, h)
	return h
}

// withHeader sets the outgoing `baggage` header to h, which is what the context's baggage
// says and within the limits: when the call has no outgoing metadata it attaches h's (shared)
// metadata, when it has other metadata it adds the header to a copy, when it has exactly this
// header it does nothing, and otherwise it merges as withBaggageHeader does.
func withHeader(ctx context.Context, h *header) context.Context {
	if has, ok := hasOutgoing(ctx); ok && !has {
		return &carried{Context: ctx, vals: h.vals}
	}
	if outgoingIs(ctx, h.md) { // this header alone: nothing to add
		return ctx
	}
	prev := metadata.ValueFromOutgoingContext(ctx, baggageHeader)
	switch {
	case len(prev) == 1 && prev[0] == h.value:
		return ctx
	case prev != nil:
		return withBaggageHeader(ctx, baggage.FromContext(ctx))
	}
	md, ok := metadata.FromOutgoingContext(ctx) // a copy, if any
	if !ok {
		return metadata.NewOutgoingContext(ctx, h.md)
	}
	md[baggageHeader] = []string{h.value}
	return metadata.NewOutgoingContext(ctx, md)
}

// withBaggageHeader sets the outgoing `baggage` header to b, merged over any baggage header
// the caller had set by hand, within the W3C limits with the decision member first
// (limitBaggage). When that is not b as it stands (b over the limits, or a header to merge),
// the returned context's baggage is what the header says, so an OpenTelemetry propagator
// (otelgrpc) that writes the header again from it writes the same.
func withBaggageHeader(ctx context.Context, b baggage.Baggage) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx) // a copy
	prev := md.Get(baggageHeader)
	header, over := "", b.Len() > MaxBaggageMembers
	if !over {
		header = b.String()
		over = len(header) > MaxBaggageBytes
	}
	if len(prev) > 0 || over || len(header) > MaxBaggageMemberBytes {
		own := []string{header}
		if over {
			own = sortedMembers(b) // something of b's must go: always the same
		}
		if limited, _ := limitBaggage(prev, own); limited != header || over {
			header = limited
			nb, _ := baggage.Parse(header) // within the limits: all of it
			ctx = baggage.ContextWithBaggage(ctx, nb)
		}
	}
	if md == nil {
		md = metadata.MD{}
	}
	md.Set(baggageHeader, header)
	return metadata.NewOutgoingContext(ctx, md)
}

// appOf returns the app of a switchyard:///<app> (or switchyard://authority/<app>) target.
func appOf(target string) (string, bool) {
	rest, ok := strings.CutPrefix(target, deploy.Scheme+":")
	if !ok {
		return "", false
	}
	if after, ok := strings.CutPrefix(rest, "//"); ok {
		_, rest, ok = strings.Cut(after, "/")
		if !ok {
			return "", false
		}
	}
	rest = strings.TrimPrefix(rest, "/")
	return rest, rest != ""
}

// UnaryServerInterceptor puts the baggage of the incoming `baggage` headers (all of them,
// merged in order, over whatever an otelgrpc server handler already extracted from the first
// one) into the handler's context, so the next hop's client interceptor finds the decision.
// The merge keeps the W3C limits (MaxBaggageMembers, MaxBaggageBytes, MaxBaggageMemberBytes):
// the last legal decision member always stays, the other members are taken in order until
// the next would break a limit, and the rest is dropped; the request goes on. Its cost is
// linear in the size of the headers and its allocations bounded by the limits, however many
// headers a request carries. A call without a baggage header is passed through untouched.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	x := newExtractor()
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(x.extract(ctx), req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	x := newExtractor()
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, streamctx.With(ss, x.extract(ss.Context())))
	}
}

// extractor reads incoming baggage headers, caching what a single header gives: most
// requests carry one of a few headers (a decision, the same tenant), and parsing one again
// costs more than the rest of the interceptor.
type extractor struct {
	parsed slotCache[parsedHeader]
}

// parsedHeader is what one incoming header gives: the baggage, within the limits, a context
// holding it (for carried), and, once asked for (same), its members as key and value.
type parsedHeader struct {
	b       baggage.Baggage
	vals    context.Context
	members *atomic.Pointer[[][2]string] // nil in the slice's place: a member has properties
}

func newExtractor() *extractor {
	return &extractor{parsed: newSlotCache[parsedHeader]()}
}

func (x *extractor) extract(ctx context.Context) context.Context {
	values := incomingValues(ctx, baggageHeader) // not a copy: read only
	if len(values) == 0 {
		return ctx
	}
	prior := baggage.FromContext(ctx)
	if len(values) == 1 && len(values[0]) <= maxCachedBytes {
		p, ok := x.parsed.get(values[0])
		if !ok {
			header, _ := limitBaggage(values)
			p.b, _ = baggage.Parse(header) // within the limits: all of it
			p.vals = baggage.ContextWithBaggage(context.Background(), p.b)
			p.members = new(atomic.Pointer[[][2]string])
			x.parsed.put(values[0], p)
		}
		switch {
		case prior.Len() == 0:
			if has, ok := hasBaggage(ctx); ok && !has {
				return &carried{Context: ctx, vals: p.vals}
			}
			return baggage.ContextWithBaggage(ctx, p.b)
		case p.same(prior): // otelgrpc extracted the same header
			return ctx
		}
	}
	var priorMembers []string
	if prior.Len() > 0 {
		priorMembers = sortedMembers(prior)
	}
	header, _ := limitBaggage(priorMembers, values)
	b, _ := baggage.Parse(header) // within the limits: all of it
	return baggage.ContextWithBaggage(ctx, b)
}

// same reports whether o holds exactly p's members; after its first call for p it allocates
// nothing.
func (p parsedHeader) same(o baggage.Baggage) bool {
	if o.Len() != p.b.Len() {
		return false
	}
	members := p.members.Load()
	if members == nil {
		list := make([][2]string, 0, p.b.Len())
		for _, m := range p.b.Members() {
			if len(m.Properties()) > 0 {
				list = nil
				break
			}
			list = append(list, [2]string{m.Key(), m.Value()})
		}
		members = &list
		p.members.Store(members)
	}
	if *members == nil {
		return false
	}
	for _, kv := range *members {
		m := o.Member(kv[0])
		if m.Key() == "" || m.Value() != kv[1] || len(m.Properties()) > 0 {
			return false
		}
	}
	return true
}

// maxCachedBytes bounds the headers (and decision values) the interceptors cache: with
// cacheSlots slots a cache holds at most about cacheSlots·3·maxCachedBytes bytes.
const maxCachedBytes = 1024

// cacheSlots is the number of entries of a slotCache.
const cacheSlots = 64

// slotCache is a lock-free direct-mapped cache from strings to immutable values: a key has
// one slot (by hash), and a new key evicts whatever was there. Its size is fixed, so keys
// chosen by a caller (a header) can only make it miss, never grow.
type slotCache[V any] struct {
	seed  maphash.Seed
	slots *[cacheSlots]atomic.Pointer[slotEntry[V]]
}

type slotEntry[V any] struct {
	key string
	val V
}

func newSlotCache[V any]() slotCache[V] {
	return slotCache[V]{seed: maphash.MakeSeed(), slots: new([cacheSlots]atomic.Pointer[slotEntry[V]])}
}

func (c slotCache[V]) slot(key string) *atomic.Pointer[slotEntry[V]] {
	return &c.slots[maphash.String(c.seed, key)%cacheSlots]
}

func (c slotCache[V]) get(key string) (V, bool) {
	if e := c.slot(key).Load(); e != nil && e.key == key {
		return e.val, true
	}
	var zero V
	return zero, false
}

func (c slotCache[V]) put(key string, val V) {
	c.slot(key).Store(&slotEntry[V]{key: key, val: val})
}
