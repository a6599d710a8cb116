package lifecycle

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
	"github.com/switchyard-go/switchyard/window"
)

// benchInfo is the method the benchmarks' requests call.
var benchInfo = &grpc.UnaryServerInfo{FullMethod: "/helloworld.Greeter/SayHello"}

// BenchmarkGate is the instance's own server interceptors (in-flight accounting, the offline
// flag and the request signals, then the own-color mark) around a handler that does nothing,
// while the instance is online, for a blue instance in an open channel and a request with no
// decision, with the global MeterProvider (a no-op: nothing set one).
func BenchmarkGate(b *testing.B) {
	benchGate(b, newBenchGate(b, otel.GetMeterProvider()), context.Background())
}

// BenchmarkGateDecided is BenchmarkGate for a request decided for the instance's own color
// (marked: one context allocated) and for the other color (not marked: a crossing).
func BenchmarkGateDecided(b *testing.B) {
	benchDecided(b, otel.GetMeterProvider())
}

// BenchmarkGateSDK is BenchmarkGate and BenchmarkGateDecided with an OTel SDK MeterProvider
// (a ManualReader, never collected during the run) recording the signals.
func BenchmarkGateSDK(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	b.Run("undecided", func(b *testing.B) { benchGate(b, newBenchGate(b, mp), context.Background()) })
	benchDecided(b, mp)
}

func benchDecided(b *testing.B, mp metric.MeterProvider) {
	for _, color := range []deploy.Color{deploy.Blue, deploy.Green} {
		b.Run("decided-"+string(color), func(b *testing.B) {
			ctx, err := traffic.WithDecision(context.Background(), "trade", color)
			if err != nil {
				b.Fatal(err)
			}
			benchGate(b, newBenchGate(b, mp), ctx)
		})
	}
}

// newBenchGate is the gate of a blue instance of order, v2, in channel trade, as New and
// Start set it up.
func newBenchGate(b *testing.B, mp metric.MeterProvider) *gate {
	m, err := newMeters(mp)
	if err != nil {
		b.Fatal(err)
	}
	g := &gate{win: window.New(nil), m: m, app: "order", color: deploy.Blue, version: "v2"}
	g.serve([]string{benchInfo.FullMethod})
	g.follow("trade", "order/blue-1")
	return g
}

func benchGate(b *testing.B, g *gate, ctx context.Context) {
	handler := func(context.Context, any) (any, error) { return nil, nil }
	marked := func(ctx context.Context, req any) (any, error) { return g.markUnary(ctx, req, nil, handler) }
	b.ReportAllocs()
	for b.Loop() {
		_, _ = g.unary(ctx, nil, benchInfo, marked)
	}
}
