package traffic_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// BenchmarkClientInterceptor measures the interceptor's own work per call (the invoker does
// nothing): a call to an app in no open channel without baggage (what most calls are), a
// call whose context already carries the decision (every hop after the first), and a call
// that has to decide.
func BenchmarkClientInterceptor(b *testing.B) {
	cli := etcdtest.Start(b).Client(b)
	rules := newClient(b, cli)
	if _, err := newController(b, cli).Open(context.Background(), "trade", []string{"order"}); err != nil {
		b.Fatal(err)
	}
	for { // wait for the rule client
		if _, ok := rules.ChannelOf("order"); ok {
			break
		}
	}
	rb, _ := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: quiet()})
	conn := func(app string) *grpc.ClientConn {
		cc, err := grpc.NewClient("switchyard:///"+app, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cc.Close() })
		return cc
	}
	order, other := conn("order"), conn("other")
	icpt := rules.UnaryClientInterceptor()
	noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	decided, _ := traffic.WithDecision(context.Background(), "trade", registry.ColorBlue)
	for _, c := range []struct {
		name string
		ctx  context.Context
		cc   *grpc.ClientConn
	}{
		{"no-channel-no-baggage", context.Background(), other},
		{"decision-present", decided, order},
		{"decides", context.Background(), order},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_ = icpt(c.ctx, "/m", nil, nil, c.cc, noop)
			}
		})
	}
	b.Run("baseline-no-interceptor", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_ = noop(decided, "/m", nil, nil, order)
		}
	})
}

// BenchmarkServerInterceptor measures extracting the incoming baggage header.
func BenchmarkServerInterceptor(b *testing.B) {
	icpt := traffic.UnaryServerInterceptor()
	handler := func(ctx context.Context, _ any) (any, error) { return nil, nil }
	for name, ctx := range map[string]context.Context{
		"no-baggage":   metadata.NewIncomingContext(context.Background(), metadata.Pairs("x", "y")),
		"with-baggage": metadata.NewIncomingContext(context.Background(), metadata.Pairs("baggage", traffic.BaggageKey+"=trade=blue")),
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = icpt(ctx, nil, nil, handler)
			}
		})
	}
}
