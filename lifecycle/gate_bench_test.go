package lifecycle

import (
	"context"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
)

// BenchmarkGate is the instance's own server interceptors (in-flight accounting and the
// offline flag, then the own-color mark) around a handler that does nothing, while the
// instance is online, for a blue instance in an open channel and a request with no decision.
func BenchmarkGate(b *testing.B) {
	var g gate
	g.setOwn("trade", deploy.Blue, "order/blue-1")
	benchGate(b, &g, context.Background())
}

// BenchmarkGateDecided is BenchmarkGate for a request decided for the instance's own color
// (marked: one context allocated) and for the other color (not marked).
func BenchmarkGateDecided(b *testing.B) {
	for _, color := range []deploy.Color{deploy.Blue, deploy.Green} {
		b.Run("decided-"+string(color), func(b *testing.B) {
			var g gate
			g.setOwn("trade", deploy.Blue, "order/blue-1")
			ctx, err := traffic.WithDecision(context.Background(), "trade", color)
			if err != nil {
				b.Fatal(err)
			}
			benchGate(b, &g, ctx)
		})
	}
}

func benchGate(b *testing.B, g *gate, ctx context.Context) {
	handler := func(context.Context, any) (any, error) { return nil, nil }
	marked := func(ctx context.Context, req any) (any, error) { return g.markUnary(ctx, req, nil, handler) }
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _ = g.unary(ctx, nil, nil, marked)
	}
}
