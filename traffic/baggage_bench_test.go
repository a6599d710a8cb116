package traffic_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

// manyHeaders returns n baggage header values of per members each, every key distinct
// (k<header>x<member>=v<member>), with the decision member trade=blue as the first member of
// the middle header. 100 headers of 64 members are 73 KB, the size of the issue 13 probe.
func manyHeaders(n, per int) []string {
	out := make([]string, n)
	for h := range out {
		var b strings.Builder
		for i := range per {
			if i > 0 {
				b.WriteByte(',')
			}
			if h == n/2 && i == 0 {
				b.WriteString(deploy.BaggageKey + "=trade=blue")
				continue
			}
			fmt.Fprintf(&b, "k%dx%d=v%d", h, i, i)
		}
		out[h] = b.String()
	}
	return out
}

// legalWorst is the largest legal baggage: 64 members (the decision and 63 others of 127
// bytes each) and 8,191 bytes in all.
func legalWorst() []string {
	members := []string{deploy.BaggageKey + "=trade=blue"}
	for i := range 63 {
		k := fmt.Sprintf("key%02d=", i)
		members = append(members, k+strings.Repeat("v", 127-len(k)))
	}
	return members
}

// incoming returns a server context whose metadata holds the values as `baggage` headers.
func incoming(values []string) context.Context {
	md := metadata.MD{}
	for _, v := range values {
		md.Append("baggage", v)
	}
	return metadata.NewIncomingContext(context.Background(), md)
}

// BenchmarkServerBaggage measures the server interceptor on the largest legal baggage (in
// one header and spread over 64) and on hostile requests of 100 and 400 headers of 64
// members each (issue 13: 2–4.7 s and 2.5 GB per request, and 52 s and 40 GB, before the
// limits). Run the hostile cases with -benchtime 1x against code without limits.
func BenchmarkServerBaggage(b *testing.B) {
	icpt := traffic.UnaryServerInterceptor()
	var seen int
	handler := func(ctx context.Context, _ any) (any, error) {
		seen = baggage.FromContext(ctx).Len()
		return nil, nil
	}
	legal := legalWorst()
	for _, c := range []struct {
		name   string
		values []string
	}{
		{"legal-1x64-8KB", []string{strings.Join(legal, ",")}},
		{"legal-64x1-8KB", legal},
		{"hostile-100x64", manyHeaders(100, 64)},
		{"hostile-400x64", manyHeaders(400, 64)},
	} {
		ctx := incoming(c.values)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = icpt(ctx, nil, nil, handler)
			}
			b.ReportMetric(float64(seen), "members")
		})
	}
}

// BenchmarkClientBaggageAtLimit measures the client interceptor deciding for a caller whose
// own baggage already holds 64 members (the slow path: something must go to make room).
func BenchmarkClientBaggageAtLimit(b *testing.B) {
	cli := etcdtest.Start(b).Client(b)
	rules := newClient(b, cli)
	if _, err := newController(b, cli).Open(context.Background(), "trade", []string{"order"}); err != nil {
		b.Fatal(err)
	}
	testutil.Eventually(b, "the rule client seeing channel trade", func() bool { _, ok := rules.ChannelOf("order"); return ok })
	order := testutil.Dial(b, "switchyard:///order", resolver(b, cli))
	icpt := rules.UnaryClientInterceptor()
	noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	caller, err := baggage.Parse(strings.Join(legalWorst()[1:], ",") + ",last=1")
	if err != nil || caller.Len() != 64 {
		b.Fatalf("caller baggage: %d members, %v", caller.Len(), err)
	}
	ctx := baggage.ContextWithBaggage(context.Background(), caller)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = icpt(ctx, "/m", nil, nil, order, noop)
	}
}
