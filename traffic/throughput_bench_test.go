package traffic_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
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

	decided, err := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
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
		{"round_robin+header", rr, metadata.AppendToOutgoingContext(bg, "baggage", deploy.BaggageKey+"=trade=blue")},
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
// of its anchor's (round_robin, or round_robin+otelgrpc for the otelgrpc variants): x- over
// all rounds, med-x- the median of the rounds' ratios and iqr-x- their interquartile range:
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
		ratios := make([][]float64, len(vs)) // per round: anchor's time / variant's time
		round := make([]time.Duration, len(vs))
		for i := 0; i < b.N; i++ {
			for j := range vs { // a different variant first each round
				k := (i + j) % len(vs)
				round[k] = callMany(b, vs[k], 100, workers)
				spent[k] += round[k]
			}
			for k := range vs {
				ratios[k] = append(ratios[k], float64(round[anchorOf(vs, k)])/float64(round[k]))
			}
		}
		for k, v := range vs {
			if a := anchorOf(vs, k); a != k {
				slices.Sort(ratios[k])
				q := func(f float64) float64 { return ratios[k][int(f*float64(len(ratios[k])-1))] }
				b.ReportMetric(float64(spent[a])/float64(spent[k]), "x-"+v.name)
				b.ReportMetric(q(0.5), "med-x-"+v.name)
				b.ReportMetric(q(0.75)-q(0.25), "iqr-x-"+v.name)
			}
		}
	})
}

// anchorOf returns the index of variant k's anchor: round_robin+otelgrpc for the otelgrpc
// variants, round_robin for the others.
func anchorOf(vs []throughputVariant, k int) int {
	anchor := "round_robin"
	if strings.Contains(vs[k].name, "otelgrpc") {
		anchor = "round_robin+otelgrpc"
	}
	return slices.IndexFunc(vs, func(v throughputVariant) bool { return v.name == anchor })
}
