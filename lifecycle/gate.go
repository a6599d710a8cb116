package lifecycle

import (
	"context"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/streamctx"
	"github.com/switchyard-go/switchyard/traffic"
	"github.com/switchyard-go/switchyard/window"
)

// EventHandler is implemented by components that want the rule events of the app's channel
// (the event as the rule client delivers it: kind, channel, rule, percents). Events arrive in
// order, from one goroutine. To follow only which color is drained, use the Instance as a
// deploy.Drains instead.
type EventHandler interface {
	HandleEvent(traffic.Event)
}

// gate counts requests and flags responses while the instance is offline, marks the
// requests decided for the instance's own color (sticky.Own), and records the request signals
// (the instance's window and its OTel metrics, doc.go "Signals"). Everything is atomic: the
// interceptors take no lock, and allocate nothing while the instance is online, except the
// one context of a marked request.
type gate struct {
	offline     atomic.Bool
	inflight    atomic.Int64
	lastArrival atomic.Int64 // unix ns
	// own is the instance's (channel, color) while it has a color and its app is in an open
	// channel, else nil; swapped whole when the rule changes (setOwn).
	own atomic.Pointer[sticky.Own]

	// The signals. win and m are set by New and fixed; sig is nil until the server begins
	// serving (serve), then swapped whole when the channel changes (follow).
	win          *window.Window
	m            *meters
	app, version string
	color        deploy.Color
	sig          atomic.Pointer[signals]
	drainOpts    []metric.RecordOption // app, color: switchyard.instance.drain.duration's
}

// serve builds the request metrics' attribute sets for methods (the server's, as it begins
// serving) with no channel yet. Start calls it before Serve.
func (g *gate) serve(methods []string) {
	g.sig.Store(newSignals(g.app, g.color, g.version, "", methods))
}

// follow follows the app's channel: the request metrics' attribute sets are built again for
// a new channel (and swapped in whole), and the own-color mark follows it (setOwn, whose
// result it returns). Callers are serialized (Start, then the rule client's subscriber
// goroutine).
func (g *gate) follow(channel string, instance string) bool {
	if s := g.sig.Load(); s != nil && s.channel != channel {
		g.sig.Store(newSignals(g.app, g.color, g.version, channel, slices.Collect(maps.Keys(s.methods))))
	}
	return g.setOwn(channel, g.color, instance)
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
// "Faults"). Other requests get ctx back, at no allocation. A request decided for the other
// color is a crossing: counted in the window and switchyard.server.crossings.
func (g *gate) mark(ctx context.Context) context.Context {
	o := g.own.Load()
	if o == nil {
		return ctx
	}
	c, ok := sticky.Decision(ctx, o.Channel)
	switch {
	case !ok:
		return ctx
	case c == o.Color:
		return sticky.WithOwn(ctx, o)
	}
	g.win.Crossing()
	if s := g.sig.Load(); s != nil && s.crossing != nil {
		g.m.crossings.Add(ctx, 1, s.crossing...)
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

func (g *gate) arrive() time.Time {
	now := time.Now()
	g.lastArrival.Store(now.UnixNano())
	g.inflight.Add(1)
	return now
}

// done records a request of fullMethod that began at start and ended with err: the window
// (an error if ServerFailure), switchyard.server.requests and switchyard.server.duration.
func (g *gate) done(ctx context.Context, fullMethod string, start time.Time, err error) {
	d := time.Since(start)
	code := codeOf(err)
	g.win.Request(d, ServerFailure(code))
	s := g.sig.Load()
	if s == nil {
		return
	}
	m := s.of(fullMethod)
	g.m.requests.Add(ctx, 1, s.requestOpts(m, code)...)
	g.m.duration.Record(ctx, d.Seconds(), m.duration...)
}

// unary serves every request normally; while offline, the response carries the flag in
// header and trailer. Headers of a unary call go out when the chain returns, so setting them
// after the handler also covers an offline that began during the call.
func (g *gate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := g.arrive()
	defer g.inflight.Add(-1)
	resp, err := handler(ctx, req)
	if g.offline.Load() {
		_ = grpc.SetHeader(ctx, offlineMD())
		_ = grpc.SetTrailer(ctx, offlineMD())
	}
	g.done(ctx, info.FullMethod, start, err)
	return resp, err
}

// stream flags the header if the instance is offline when the stream starts (headers go out
// with the first message), and the trailer if it is offline when the stream ends.
func (g *gate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := g.arrive()
	defer g.inflight.Add(-1)
	if g.offline.Load() {
		_ = ss.SetHeader(offlineMD())
	}
	err := handler(srv, ss)
	if g.offline.Load() {
		ss.SetTrailer(offlineMD())
	}
	g.done(ss.Context(), info.FullMethod, start, err)
	return err
}

// serverOptions are the interceptors every instance's server needs, outermost first:
// in-flight accounting, the offline flag and the request signals, baggage extraction for
// stickiness, then the own-color mark and crossings (which read the extracted baggage).
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
