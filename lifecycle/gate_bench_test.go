package lifecycle

import (
	"context"
	"testing"
)

// BenchmarkGate is the instance's own server interceptor (in-flight accounting and the offline
// flag) around a handler that does nothing, while the instance is online.
func BenchmarkGate(b *testing.B) {
	var g gate
	handler := func(context.Context, any) (any, error) { return nil, nil }
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _ = g.unary(ctx, nil, nil, handler)
	}
}
