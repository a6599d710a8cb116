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
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

// overLimits says how the baggage header values break the W3C limits (64 members, 8192
// bytes, 4096 bytes a member), reading them as one list as a receiver does; "" if they do
// not.
func overLimits(values []string) string {
	all := strings.Join(values, ",")
	if all == "" {
		return ""
	}
	members := strings.Split(all, ",")
	if len(all) > traffic.MaxBaggageBytes {
		return fmt.Sprintf("%d bytes", len(all))
	}
	if len(members) > traffic.MaxBaggageMembers {
		return fmt.Sprintf("%d members", len(members))
	}
	for _, m := range members {
		if len(m) > traffic.MaxBaggageMemberBytes {
			return fmt.Sprintf("a member of %d bytes", len(m))
		}
	}
	return ""
}

// baggageReporter answers with the decision for trade and the size of the baggage its
// handler got: "<color> <members> <bytes> <largest member's bytes>".
type baggageReporter struct {
	greeterpb.UnimplementedGreeterServer
}

func (baggageReporter) SayHello(ctx context.Context, _ *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	b := baggage.FromContext(ctx)
	color, ok := traffic.Decision(ctx, "trade")
	if !ok {
		color = "none"
	}
	largest := 0
	for _, m := range b.Members() {
		largest = max(largest, len(m.String()))
	}
	return &greeterpb.HelloReply{Message: fmt.Sprintf("%s %d %d %d", color, b.Len(), len(b.String()), largest)}, nil
}

// Issue 13 item 1: a request with many baggage headers is merged within the W3C limits,
// keeping the decision, whatever the number of headers (before: every member of every header
// was kept, merged in quadratic time).
func TestServerInterceptorBoundsManyBaggageHeaders(t *testing.T) {
	for _, withOtel := range []bool{false, true} {
		t.Run(fmt.Sprintf("otelgrpc=%v", withOtel), func(t *testing.T) {
			cli := etcdtest.Start(t).Client(t)
			serve(t, cli, "inventory", baggageReporter{}, withOtel)
			inventory := dialPlain(t, cli, "inventory")
			var kv []string
			for _, v := range manyHeaders(30, 64) { // the decision is in header 15
				kv = append(kv, "baggage", v)
			}
			ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), kv...), testutil.Deadline)
			defer cancel()
			resp, err := inventory.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
			if err != nil {
				t.Fatal(err)
			}
			var color string
			var members, size, largest int
			if _, err := fmt.Sscan(resp.GetMessage(), &color, &members, &size, &largest); err != nil {
				t.Fatalf("answer %q: %v", resp.GetMessage(), err)
			}
			if color != "blue" || members > traffic.MaxBaggageMembers || size > traffic.MaxBaggageBytes || largest > traffic.MaxBaggageMemberBytes {
				t.Fatalf("30 headers of 64 members: the handler saw decision %s and %d members, %d bytes (largest %d); want blue within 64 members, 8192 bytes",
					color, members, size, largest)
			}
		})
	}
}

// The cost of the merge does not grow with the number of headers once the limits are
// reached: as many allocations for 64 headers of 64 members as for 8.
func TestServerBaggageCostDoesNotGrowWithHeaders(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts; see BenchmarkServerBaggage")
	}
	icpt := traffic.UnaryServerInterceptor()
	handler := func(ctx context.Context, _ any) (any, error) { return nil, nil }
	allocs := func(headers int) float64 {
		ctx := incoming(manyHeaders(headers, 64))
		return testing.AllocsPerRun(2, func() { _, _ = icpt(ctx, nil, nil, handler) })
	}
	few, many := allocs(8), allocs(64)
	if many > few+2 {
		t.Fatalf("the server interceptor made %v allocations for 8 headers of 64 members and %v for 64", few, many)
	}
}

// Issue 13 item 2: whatever legal baggage the caller carries (and an 8 KB member it should
// not), every hop of the chain sees the decision made on the first call into the channel,
// and no hop receives a baggage header over the limits. Before, 64 caller members lost the
// decision on a few calls in a hundred (the 65th member of a map, dropped at random) and an
// 8 KB caller baggage lost it on every call (a header over 8192 bytes is dropped whole).
func TestDecisionSurvivesBaggageAtTheLimits(t *testing.T) {
	small := make([]baggage.Member, 0, 64)
	for i := range 64 {
		m, _ := baggage.NewMemberRaw(fmt.Sprintf("m%02d", i), "v")
		small = append(small, m)
	}
	full, _ := baggage.Parse(strings.Join(legalWorst()[1:], ",") + ",last=" + strings.Repeat("1", 118)) // 64 members, 8187 bytes
	big, _ := baggage.NewMemberRaw("big", strings.Repeat("x", 8180))
	bigBag, _ := baggage.New(big)
	smallBag, _ := baggage.New(small...)
	with := func(b baggage.Baggage) context.Context { return baggage.ContextWithBaggage(context.Background(), b) }
	decided, err := traffic.WithDecision(with(smallBag), "trade", deploy.Blue)
	if err != nil {
		t.Fatal(err)
	}
	if smallBag.Len() != 64 || full.Len() != 64 || baggage.FromContext(decided).Len() != 65 {
		t.Fatalf("caller baggage of %d, %d and %d members", smallBag.Len(), full.Len(), baggage.FromContext(decided).Len())
	}
	for _, withOtel := range []bool{false, true} {
		t.Run(fmt.Sprintf("otelgrpc=%v", withOtel), func(t *testing.T) {
			c := newChain(t, withOtel)
			if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
				t.Fatal(err)
			}
			c.shift(t, 50)
			for _, k := range []struct {
				name  string
				ctx   context.Context
				calls int
				want  func(string) bool
			}{
				{"64 members", with(smallBag), 50, decidedAtOrder},
				{"64 members, 8187 bytes", with(full), 10, decidedAtOrder},
				{"one member of 8184 bytes", with(bigBag), 10, decidedAtOrder},
				{"64 members and the caller's decision", decided, 10,
					func(s string) bool { return s == "gateway:blue order:blue inventory:blue" }},
			} {
				lost, example := 0, ""
				for range k.calls {
					if got := c.call(t, k.ctx); !k.want(got) {
						lost, example = lost+1, got
					}
				}
				if lost > 0 {
					t.Errorf("%s: the decision was lost in %d of %d calls (hops saw %q)", k.name, lost, k.calls, example)
				}
			}
			for _, h := range c.hops {
				if n := h.overLimit.Load(); n != 0 {
					t.Errorf("%s received %d calls with baggage over the W3C limits", h.name, n)
				}
			}

			// The server path alone: a header of 65 members with the decision last, and one
			// of 8 KB with it first, sent straight to inventory.
			inventory := dialPlain(t, c.cli, "inventory")
			for name, header := range map[string]string{
				"65 members":   strings.Join(plainMembers(64), ",") + "," + deploy.BaggageKey + "=trade=blue",
				"8300 bytes":   deploy.BaggageKey + "=trade=blue," + strings.Join(legalWorst()[1:], ",") + ",last=" + strings.Repeat("1", 100),
				"8 KB members": "a=" + strings.Repeat("x", 5000) + "," + deploy.BaggageKey + "=trade=blue,b=" + strings.Repeat("y", 5000),
			} {
				ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "baggage", header), testutil.Deadline)
				resp, err := inventory.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if resp.GetMessage() != "inventory:blue" {
					t.Errorf("a header of %s: inventory saw %q, want blue", name, resp.GetMessage())
				}
			}
		})
	}
}

// decidedAtOrder: gateway (in no channel) saw no decision, and order and inventory the same.
func decidedAtOrder(s string) bool {
	return s == "gateway:none order:blue inventory:blue" || s == "gateway:none order:green inventory:green"
}

// plainMembers returns n members m<i>=v.
func plainMembers(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m%d=v", i)
	}
	return out
}
