package lifecycle

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/streamctx"
	"github.com/switchyard-go/switchyard/traffic"
)

// EventHandler is implemented by components that want the rule events of the app's channel
// (the event as the rule client delivers it: kind, channel, rule, percents). Events arrive in
// order, from one goroutine. To follow only which color is drained, use the Instance as a
// deploy.Drains instead.
type EventHandler interface {
	HandleEvent(traffic.Event)
}

// gate counts requests and flags responses while the instance is offline, and marks the
// requests decided for the instance's own color (sticky.Own). Everything is atomic: the
// interceptors take no lock, and allocate nothing while the instance is online, except the
// one context of a marked request.
type gate struct {
	offline     atomic.Bool
	inflight    atomic.Int64
	lastArrival atomic.Int64 // unix ns
	// own is the instance's (channel, color) while it has a color and its app is in an open
	// channel, else nil; swapped whole when the rule changes (setOwn).
	own atomic.Pointer[sticky.Own]
}

// setOwn follows the app's channel: own becomes (channel, color) of instance ("<app>/<id>",
// which scopes the reach board to this instance's calls), or nil when channel or color is
// empty. An unchanged pair keeps its *sticky.Own. It reports whether own changed. Callers are
// serialized (Start, then the rule client's subscriber goroutine).
func (g *gate) setOwn(channel string, color deploy.Color, instance string) bool {
	cur := g.own.Load()
	if channel == "" || color == "" {
		g.own.Store(nil)
		return cur != nil
	}
	if cur != nil && cur.Channel == channel && cur.Color == color {
		return false
	}
	g.own.Store(&sticky.Own{Channel: channel, Color: color, Instance: instance})
	return true
}

// mark returns ctx marked with the instance's own (channel, color) when the request's
// decision for that channel is the instance's color: the code serving it is of the decided
// color, so the balancer must not cross to the other color on its calls (DESIGN.md
// "Faults"). Other requests get ctx back, at no allocation.
func (g *gate) mark(ctx context.Context) context.Context {
	o := g.own.Load()
	if o == nil {
		return ctx
	}
	if c, ok := sticky.Decision(ctx, o.Channel); ok && c == o.Color {
		return sticky.WithOwn(ctx, o)
	}
	return ctx
}

func (g *gate) markUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(g.mark(ctx), req)
}

func (g *gate) markStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, streamctx.With(ss, g.mark(ss.Context())))
}

func offlineMD() metadata.MD { return metadata.Pairs(deploy.OfflineHeader, "1") }

func (g *gate) arrive() {
	g.lastArrival.Store(time.Now().UnixNano())
	g.inflight.Add(1)
}

// unary serves every request normally; while offline, the response carries the flag in
// header and trailer. Headers of a unary call go out when the chain returns, so setting them
// after the handler also covers an offline that began during the call.
func (g *gate) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	g.arrive()
	defer g.inflight.Add(-1)
	resp, err := handler(ctx, req)
	if g.offline.Load() {
		_ = grpc.SetHeader(ctx, offlineMD())
		_ = grpc.SetTrailer(ctx, offlineMD())
	}
	return resp, err
}

// stream flags the header if the instance is offline when the stream starts (headers go out
// with the first message), and the trailer if it is offline when the stream ends.
func (g *gate) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	g.arrive()
	defer g.inflight.Add(-1)
	if g.offline.Load() {
		_ = ss.SetHeader(offlineMD())
	}
	err := handler(srv, ss)
	if g.offline.Load() {
		ss.SetTrailer(offlineMD())
	}
	return err
}

// serverOptions are the interceptors every instance's server needs, outermost first:
// in-flight accounting and the offline flag, baggage extraction for stickiness, then the
// own-color mark (which reads the extracted baggage).
func (g *gate) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(g.unary, traffic.UnaryServerInterceptor(), g.markUnary),
		grpc.ChainStreamInterceptor(g.stream, traffic.StreamServerInterceptor(), g.markStream),
	}
}

// quiet reports whether no request is in flight and none arrived for d.
func (g *gate) quiet(now time.Time, d time.Duration) bool {
	return g.inflight.Load() == 0 && now.Sub(time.Unix(0, g.lastArrival.Load())) >= d
}
