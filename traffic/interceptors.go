package traffic

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/baggage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/registry"
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
func (c *Client) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(c.stick(ctx, cc.Target()), method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor is UnaryClientInterceptor for streams.
func (c *Client) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(c.stick(ctx, cc.Target()), desc, cc, method, opts...)
	}
}

// stick returns ctx with the decision for target's channel made if needed, and the baggage
// written to the outgoing metadata.
func (c *Client) stick(ctx context.Context, target string) context.Context {
	b := baggage.FromContext(ctx)
	if app, ok := appOf(target); ok {
		if r, open := c.ChannelOf(app); open {
			if _, decided := sticky.Lookup(b.Member(BaggageKey).Value(), r.Channel); !decided {
				color := registry.ColorGreen
				if c.random()*100 < r.BluePercent {
					color = registry.ColorBlue
				}
				if dctx, err := WithDecision(ctx, r.Channel, color); err == nil {
					ctx, b = dctx, baggage.FromContext(dctx)
				} else {
					c.cfg.Logger.Debug("traffic: decision not carried", "channel", r.Channel, "err", err)
				}
			}
		}
	}
	if b.Len() == 0 {
		return ctx
	}
	return withBaggageHeader(ctx, b)
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
	rest, ok := strings.CutPrefix(target, registry.Scheme+":")
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
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(extract(ctx), req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		if nctx := extract(ctx); nctx != ctx {
			ss = &serverStream{ServerStream: ss, ctx: nctx}
		}
		return handler(srv, ss)
	}
}

type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *serverStream) Context() context.Context { return s.ctx }

func extract(ctx context.Context) context.Context {
	values := metadata.ValueFromIncomingContext(ctx, baggageHeader)
	if len(values) == 0 {
		return ctx
	}
	var prior []string
	if b := baggage.FromContext(ctx); b.Len() > 0 {
		prior = sortedMembers(b)
	}
	header, _ := limitBaggage(prior, values)
	b, _ := baggage.Parse(header) // within the limits: all of it
	return baggage.ContextWithBaggage(ctx, b)
}
