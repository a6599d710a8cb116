package traffic_test

import (
	"context"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
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
	testutil.Eventually(b, "the rule client seeing channel trade", func() bool { _, ok := rules.ChannelOf("order"); return ok })
	conn := func(app string) *grpc.ClientConn { return testutil.Dial(b, "switchyard:///"+app, resolver(b, cli)) }
	order, other := conn("order"), conn("other")
	icpt := rules.UnaryClientInterceptor()
	noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	decided, _ := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
	var header context.Context // decided, with the header already written (by a previous call's interceptor, say)
	_ = icpt(decided, "/m", nil, nil, order, func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		header = ctx
		return nil
	})
	for _, c := range []struct {
		name string
		ctx  context.Context
		cc   *grpc.ClientConn
	}{
		{"no-channel-no-baggage", context.Background(), other},
		{"decision-present", decided, order},
		{"decision-and-header-present", header, order},
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

// BenchmarkServerInterceptor measures extracting the incoming baggage header: none, a
// decision, a decision that otelgrpc's server handler already extracted, and a decision with
// a member that changes with every request (a header the interceptor has not seen).
func BenchmarkServerInterceptor(b *testing.B) {
	icpt := traffic.UnaryServerInterceptor()
	handler := func(ctx context.Context, _ any) (any, error) { return nil, nil }
	decision := deploy.BaggageKey + "=trade=blue"
	withBaggage := metadata.NewIncomingContext(context.Background(), metadata.Pairs("baggage", decision))
	fresh := make([]context.Context, 1024)
	for i := range fresh {
		fresh[i] = metadata.NewIncomingContext(context.Background(), metadata.Pairs("baggage", fmt.Sprintf("%s,request=%d", decision, i)))
	}
	for _, c := range []struct {
		name string
		ctx  func(i int) context.Context
	}{
		{"no-baggage", func() func(int) context.Context {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x", "y"))
			return func(int) context.Context { return ctx }
		}()},
		{"with-baggage", func(int) context.Context { return withBaggage }},
		{"with-baggage-extracted-by-otelgrpc", func() func(int) context.Context {
			b, _ := baggage.Parse(decision)
			ctx := baggage.ContextWithBaggage(withBaggage, b)
			return func(int) context.Context { return ctx }
		}()},
		{"with-baggage-unseen", func(i int) context.Context { return fresh[i%len(fresh)] }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = icpt(c.ctx(i), nil, nil, handler)
			}
		})
	}
}

// BenchmarkCanaryOfOnePercent is TestCanaryOfOnePercent with the real random source: calls at
// a 1 % canary, 8 at a time, straight to inventory, each deciding afresh; it reports the share
// the server saw as blue (blue-%). Run it long enough for the share to mean something, e.g.
// 50,000 calls (sd 0.045 pp):
//
//	go test -run '^$' -bench CanaryOfOnePercent -benchtime 50000x ./traffic/
func BenchmarkCanaryOfOnePercent(b *testing.B) {
	c := newChain(b, false)
	if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
		b.Fatal(err)
	}
	c.shift(b, 1)
	inventory := dial(b, c.cli, c.rules, "inventory", false)
	if _, _, other := canaryCalls(b, inventory, 1, 1); other != 0 { // connect
		b.Fatal("the first call failed")
	}
	b.ResetTimer()
	blue, green, other := canaryCalls(b, inventory, int64(b.N), 8)
	b.StopTimer()
	if other != 0 {
		b.Fatalf("%d of %d calls failed or were not sticky", other, b.N)
	}
	b.ReportMetric(100*float64(blue)/float64(blue+green), "blue-%")
}
