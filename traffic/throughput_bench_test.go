package traffic_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// throughputVariant is one way of calling a greeter over loopback.
type throughputVariant struct {
	name   string
	client greeterpb.GreeterClient
	ctx    context.Context // the calls' parent context
}

// throughputVariants starts greeters and dials them every way BenchmarkInterceptorThroughput
// compares, with a release open on the apps dialed through switchyard:
//
//   - round_robin: grpc's round_robin straight to a plain server, no interceptor (the anchor);
//   - switchyard: switchyard:///order through the resolver and the weighted balancer, no
//     interceptor (what the balancer alone costs);
//   - interceptors/decides: the traffic interceptors on both ends, every call deciding (the
//     first hop of a chain);
//   - interceptors/decided: the same, every call carrying its decision (every later hop);
//   - round_robin+header: round_robin to the plain server, every call carrying the decision's
//     baggage header set by hand (what carrying a decision costs gRPC itself);
//   - round_robin+otelgrpc: round_robin with otelgrpc's handlers and a baggage propagator on
//     both ends (the anchor when otelgrpc is installed);
//   - interceptors+otelgrpc/decides, /decided: the traffic interceptors with otelgrpc's
//     handlers.
func throughputVariants(b *testing.B) []throughputVariant {
	cli := etcdtest.Start(b).Client(b)
	rules, ctl := newClient(b, cli), newController(b, cli)
	if _, err := ctl.Open(context.Background(), "trade", []string{"order", "payment"}); err != nil {
		b.Fatal(err)
	}
	testutil.Eventually(b, "the rule client seeing trade open", func() bool { _, ok := rules.ChannelOf("payment"); return ok })

	otelServer := grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithPropagators(propagator)))
	otelClient := grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithPropagators(propagator)))
	icptServer := grpc.ChainUnaryInterceptor(traffic.UnaryServerInterceptor())
	icptClient := grpc.WithChainUnaryInterceptor(rules.UnaryClientInterceptor())
	roundRobin := grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`)

	plain, _ := testutil.ServeGreeter(b, "plain")
	withOtel, _ := testutil.ServeGreeter(b, "otel", otelServer)
	order, _ := testutil.ServeGreeter(b, "order", icptServer)
	register(b, cli, "order", order)
	payment, _ := testutil.ServeGreeter(b, "payment", icptServer, otelServer)
	register(b, cli, "payment", payment)

	decided, err := traffic.WithDecision(context.Background(), "trade", registry.ColorBlue)
	if err != nil {
		b.Fatal(err)
	}
	bg := context.Background()
	orderIcpt := testutil.Greeter(b, "switchyard:///order", resolver(b, cli), icptClient)
	paymentIcpt := testutil.Greeter(b, "switchyard:///payment", resolver(b, cli), icptClient, otelClient)
	rr := testutil.Greeter(b, "passthrough:///"+plain, roundRobin)
	vs := []throughputVariant{
		{"round_robin", rr, bg},
		{"switchyard", testutil.Greeter(b, "switchyard:///order", resolver(b, cli)), bg},
		{"interceptors/decides", orderIcpt, bg},
		{"interceptors/decided", orderIcpt, decided},
		{"round_robin+header", rr, metadata.AppendToOutgoingContext(bg, "baggage", traffic.BaggageKey+"=trade=blue")},
		{"round_robin+otelgrpc", testutil.Greeter(b, "passthrough:///"+withOtel, roundRobin, otelClient), bg},
		{"interceptors+otelgrpc/decides", paymentIcpt, bg},
		{"interceptors+otelgrpc/decided", paymentIcpt, decided},
	}
	for _, v := range vs { // connect
		ctx, cancel := context.WithTimeout(v.ctx, testutil.Deadline)
		_, err := v.client.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
	}
	return vs
}

// callMany makes calls unary calls, workers at a time, and returns how long they took.
func callMany(b *testing.B, v throughputVariant, calls, workers int) time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				if _, err := v.client.SayHello(v.ctx, &greeterpb.HelloRequest{}); err != nil {
					b.Error(v.name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkInterceptorThroughput measures unary calls over loopback with a release open, 8
// at a time, every way throughputVariants lists. Each sub-benchmark reports ns/op per call
// (B/op and allocs/op count both ends: client and server run in this process). The "ratio"
// sub-benchmark interleaves the variants in rounds of 100 calls each, so that load from
// elsewhere on the machine hits them alike, and reports each one's throughput as a fraction
// of its anchor's (round_robin, or round_robin+otelgrpc for the otelgrpc variants):
//
//	go test -run '^$' -bench InterceptorThroughput -benchmem ./traffic/
//	go test -run '^$' -bench InterceptorThroughput/ratio -benchtime 300x ./traffic/
func BenchmarkInterceptorThroughput(b *testing.B) {
	vs := throughputVariants(b)
	const workers = 8
	for _, v := range vs {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			callMany(b, v, b.N, workers)
		})
	}
	b.Run("ratio", func(b *testing.B) {
		spent := make([]time.Duration, len(vs))
		for i := 0; i < b.N; i++ {
			for j := range vs { // a different variant first each round
				k := (i + j) % len(vs)
				spent[k] += callMany(b, vs[k], 100, workers)
			}
		}
		for k, v := range vs {
			anchor := 0 // round_robin
			if strings.Contains(v.name, "otelgrpc") {
				anchor = 5 // round_robin+otelgrpc
			}
			if k != anchor {
				b.ReportMetric(float64(spent[anchor])/float64(spent[k]), "x-"+v.name)
			}
		}
	})
}
