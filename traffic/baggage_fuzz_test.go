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
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

// checkLimits fails t if b would go on the wire over the W3C limits.
func checkLimits(t *testing.T, what string, b baggage.Baggage) {
	t.Helper()
	if n, s := b.Len(), b.String(); n > traffic.MaxBaggageMembers || len(s) > traffic.MaxBaggageBytes {
		t.Fatalf("%s: %d members, %d bytes", what, n, len(s))
	}
	for _, m := range b.Members() {
		if n := len(m.String()); n > traffic.MaxBaggageMemberBytes {
			t.Fatalf("%s: member %q of %d bytes", what, m.Key(), n)
		}
	}
}

// legalDecision returns the value of seg if it is a decision member that OpenTelemetry
// parses and that is within the per-member limit, checking on the way that the interceptors'
// own reading of seg agrees with OpenTelemetry's.
func legalDecision(t *testing.T, seg string) (string, bool) {
	t.Helper()
	if len(seg) > traffic.MaxBaggageBytes {
		return "", false // Parse refuses it whole; readMember's size check drops it
	}
	parsed, err := baggage.Parse(seg)
	key, size, ok := traffic.ReadMember(seg)
	if ok != (err == nil && parsed.Len() == 1) {
		t.Fatalf("member %q: readMember says ok=%v, OpenTelemetry's Parse %d members, %v", seg, ok, parsed.Len(), err)
	}
	if !ok {
		return "", false
	}
	m := parsed.Member(key)
	if want := max(len(seg), len(m.String())); m.Key() != key || size != want {
		t.Fatalf("member %q: readMember says key %q, %d bytes; OpenTelemetry %q, %q (%d bytes)", seg, key, size, m.Key(), m.String(), want)
	}
	return m.Value(), key == deploy.BaggageKey && size <= traffic.MaxBaggageMemberBytes
}

// FuzzServerBaggage: the server interceptor on any set of `baggage` headers (the input split
// at newlines, the lot repeated up to 8 times; flags&1 adds what an otelgrpc server handler extracts from
// the first header) never panics, gives the handler baggage within the W3C limits, and keeps
// the last legal decision member.
func FuzzServerBaggage(f *testing.F) {
	d := deploy.BaggageKey
	for _, seed := range []struct {
		headers      string
		repeat, flag uint8
	}{
		{d + "=trade=blue", 0, 0},
		{"tenant=acme\n" + d + "=trade=blue", 0, 1},
		{strings.Join(manyHeaders(4, 64), "\n"), 3, 1},
		{strings.Join(legalWorst(), ","), 0, 0},
		{strings.Join(legalWorst(), "\n"), 1, 1},
		{strings.Join(plainMembers(64), ",") + "," + d + "=trade=blue", 0, 1},
		{"a=" + strings.Repeat("x", 5000) + "," + d + "=trade=blue,b=" + strings.Repeat("y", 5000), 0, 0},
		{d + "=trade=blue\n" + d + "=trade=green;p\n" + d + "=trade=%zz", 2, 1},
		{" k = v ; p = 1 ;; q ,k2=%FF%41,k3=%E2%82%AC," + d + " = pay=green&trade=blue ", 0, 0},
		{"k=v;p=%2\n,,,=,;,k=\tv\t;\tp\t", 0, 1},
		{d + "=" + strings.Repeat("trade=blue&", 400), 0, 0},
		{strings.Repeat("k=v,", 3000) + d + "=trade=green", 0, 0},
	} {
		f.Add(seed.headers, seed.repeat, seed.flag)
	}
	icpt := traffic.UnaryServerInterceptor()
	f.Fuzz(func(t *testing.T, headers string, repeat, flag uint8) {
		values := strings.Split(headers, "\n")
		want, decided := "", false
		var prior baggage.Baggage
		if flag&1 != 0 {
			prior, _ = baggage.Parse(values[0])
			if m := prior.Member(deploy.BaggageKey); m.Key() != "" && len(m.String()) <= traffic.MaxBaggageMemberBytes {
				want, decided = m.Value(), true
			}
		}
		for _, v := range values { // the repeats below do not change which is last
			for seg := range strings.SplitSeq(v, ",") {
				if value, ok := legalDecision(t, seg); ok {
					want, decided = value, true
				}
			}
		}
		for range repeat % 4 {
			values = append(values, values...)
		}
		ctx := metadata.NewIncomingContext(context.Background(), metadata.MD{"baggage": values})
		if flag&1 != 0 {
			ctx = baggage.ContextWithBaggage(ctx, prior)
		}
		var got baggage.Baggage
		_, _ = icpt(ctx, nil, nil, func(ctx context.Context, _ any) (any, error) {
			got = baggage.FromContext(ctx)
			return nil, nil
		})
		checkLimits(t, "the handler's baggage", got)
		if m := got.Member(deploy.BaggageKey); decided && m.Value() != want {
			t.Fatalf("the decision member is %q, want %q, the last legal one", m.Value(), want)
		}
	})
}

// FuzzOutgoingBaggage: the client interceptor, deciding for channel trade at 100 % blue or
// keeping the caller's decision, writes one `baggage` header within the W3C limits that
// holds the decision (read with OpenTelemetry's Parse, as any next hop does), whatever the
// caller's baggage (its own members, n generated members of size bytes, one of big bytes,
// its own decision member) and whatever header it had set by hand; the context the next
// interceptor (otelgrpc) gets carries the same.
func FuzzOutgoingBaggage(f *testing.F) {
	cli := etcdtest.Start(f).Client(f)
	rules := newClient(f, cli)
	ctl := newController(f, cli)
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		f.Fatal(err)
	}
	if _, err := ctl.Shift(context.Background(), "trade", 100); err != nil {
		f.Fatal(err)
	}
	testutil.Eventually(f, "the rule client seeing trade at 100%", func() bool { r, _ := rules.Rule("trade"); return r.BluePercent == 100 })
	order := testutil.Dial(f, "switchyard:///order", resolver(f, cli)) // never connects: the invoker is a stub
	icpt := rules.UnaryClientInterceptor()

	for _, seed := range []struct {
		members, prev, decision string
		n                       uint8
		size, big               uint16
	}{
		{"", "", "", 0, 0, 0},
		{"tenant=acme", "", "trade=green", 0, 0, 0},
		{"", "", "", 64, 1, 0},            // 64 caller members: the decision makes 65
		{"", "", "trade=green", 64, 1, 0}, // and with the caller's own decision
		{"", "", "", 63, 127, 0},          // 8 KB in 64 members
		{"", "", "", 0, 0, 8180},          // one 8 KB member
		{"", "", "", 40, 100, 5000},
		{"a=1", "b=2," + deploy.BaggageKey + "=trade=green,c=" + strings.Repeat("z", 8000), "", 10, 10, 0},
		{"", strings.Repeat("p=1,", 100), "pay=blue&trade=red", 70, 100, 0},
		{"a b=1,ünï=2,k=%FF", "", "trade=blue&x=" + strings.Repeat("x", 3000), 0, 0, 0},
	} {
		f.Add(seed.members, seed.prev, seed.decision, seed.n, seed.size, seed.big)
	}
	f.Fuzz(func(t *testing.T, members, prev, decision string, n uint8, size, big uint16) {
		var b baggage.Baggage
		set := func(k, v string) {
			if m, err := baggage.NewMemberRaw(k, v); err == nil {
				b, _ = b.SetMember(m)
			}
		}
		for seg := range strings.SplitSeq(members, ",") {
			k, v, _ := strings.Cut(seg, "=")
			set(k, v)
		}
		for i := range int(n) {
			set(fmt.Sprintf("g%03d", i), strings.Repeat("v", int(size%256)))
		}
		if big > 0 {
			set("big", strings.Repeat("x", int(big%10000)))
		}
		want := deploy.Blue
		if decision != "" {
			set(deploy.BaggageKey, decision)
			if c, ok := sticky.Lookup(b.Member(deploy.BaggageKey).Value(), "trade"); ok {
				if len(b.Member(deploy.BaggageKey).String()) > traffic.MaxBaggageMemberBytes {
					t.Skip("the caller's own decision member is over the limit: it cannot go on the wire")
				}
				want = deploy.Color(c)
			}
		}
		ctx := baggage.ContextWithBaggage(context.Background(), b)
		if prev != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "baggage", prev)
		}
		invoked := false
		invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			invoked = true
			md, _ := metadata.FromOutgoingContext(ctx)
			h := md.Get("baggage")
			if len(h) != 1 {
				t.Fatalf("%d baggage headers, want 1", len(h))
			}
			if why := overLimits(h); why != "" {
				t.Fatalf("the header is over the limits: %s", why)
			}
			wire, err := baggage.Parse(h[0])
			if err != nil {
				t.Fatalf("the next hop cannot read all of the header: %v", err)
			}
			checkLimits(t, "the header", wire)
			checkLimits(t, "the context's baggage", baggage.FromContext(ctx))
			next := baggage.ContextWithBaggage(context.Background(), wire)
			if c, ok := traffic.Decision(next, "trade"); !ok || c != want {
				t.Fatalf("the next hop reads decision %q %v, want %s (header %.200q)", c, ok, want, h[0])
			}
			if c, ok := traffic.Decision(ctx, "trade"); !ok || c != want {
				t.Fatalf("the context's decision is %q %v, want %s", c, ok, want)
			}
			return nil
		}
		if err := icpt(ctx, "/m", nil, nil, order, invoker); err != nil || !invoked {
			t.Fatalf("interceptor: %v (invoker called: %v)", err, invoked)
		}
	})
}
