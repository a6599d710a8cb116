package traffic_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// hop is one service of the chain: it records the decision and the number of baggage
// headers it received, and calls the next hop (if any) with the handler's context.
type hop struct {
	greeterpb.UnimplementedGreeterServer
	name      string
	next      greeterpb.GreeterClient
	headers   atomic.Int64 // calls that arrived with more than one baggage header
	overLimit atomic.Int64 // calls whose baggage headers broke the W3C limits
}

func (h *hop) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get("baggage")) > 1 {
		h.headers.Add(1)
	}
	if overLimits(md.Get("baggage")) != "" {
		h.overLimit.Add(1)
	}
	color, ok := traffic.Decision(ctx, "trade")
	seen := fmt.Sprintf("%s:%s", h.name, color)
	if !ok {
		seen = h.name + ":none"
	}
	if h.next == nil {
		return &greeterpb.HelloReply{Message: seen}, nil
	}
	resp, err := h.next.SayHello(ctx, req)
	if err != nil {
		return nil, err
	}
	return &greeterpb.HelloReply{Message: seen + " " + resp.GetMessage()}, nil
}

type chain struct {
	cli   *clientv3.Client
	rules *traffic.Rules
	ctl   *traffic.Controller
	entry greeterpb.GreeterClient // calls gateway
	hops  []*hop
}

// newChain starts gateway → order → inventory, each registered in etcd and dialed through
// switchyard:///<app> with the traffic interceptors; withOtel adds otelgrpc handlers with a
// baggage propagator on every client and server.
func newChain(t testing.TB, withOtel bool) *chain {
	t.Helper()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	c := &chain{cli: cli, rules: newClient(t, cli), ctl: newController(t, cli)}
	var next greeterpb.GreeterClient
	for _, app := range []string{"inventory", "order", "gateway"} {
		h := &hop{name: app, next: next}
		c.hops = append([]*hop{h}, c.hops...)
		serve(t, cli, app, h, withOtel)
		next = dial(t, cli, c.rules, app, withOtel)
	}
	c.entry = next
	return c
}

var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func serve(t testing.TB, cli *clientv3.Client, app string, h greeterpb.GreeterServer, withOtel bool) {
	t.Helper()
	ln := testutil.Listen(t)
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(traffic.UnaryServerInterceptor())}
	if withOtel {
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithPropagators(propagator))))
	}
	s := grpc.NewServer(opts...)
	greeterpb.RegisterGreeterServer(s, h)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	register(t, cli, app, ln.Addr().String())
}

// register registers app's instance app-1 at addr until cleanup.
func register(t testing.TB, cli *clientv3.Client, app, addr string) {
	t.Helper()
	reg, err := registry.NewRegistrar(registry.Config{Client: cli, Logger: testutil.Logger(t),
		Instance: registry.Record{App: app, ID: app + "-1", Addr: addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	if err := reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// resolver is a switchyard resolver builder over cli.
func resolver(t testing.TB, cli *clientv3.Client) grpc.DialOption {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return grpc.WithResolvers(rb)
}

// dial dials switchyard:///app through the resolver with the rule client's unary
// interceptor (and otelgrpc's client handler if withOtel).
func dial(t testing.TB, cli *clientv3.Client, rules *traffic.Rules, app string, withOtel bool) greeterpb.GreeterClient {
	t.Helper()
	opts := []grpc.DialOption{resolver(t, cli), grpc.WithChainUnaryInterceptor(rules.UnaryClientInterceptor())}
	if withOtel {
		opts = append(opts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithPropagators(propagator))))
	}
	return testutil.Greeter(t, "switchyard:///"+app, opts...)
}

func (c *chain) call(t testing.TB, ctx context.Context) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, testutil.Deadline)
	defer cancel()
	resp, err := c.entry.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetMessage()
}

// shift moves trade to percent and waits until the chain's rule client sees it.
func (c *chain) shift(t testing.TB, percent float64) {
	t.Helper()
	if _, err := c.ctl.Shift(context.Background(), "trade", percent); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, fmt.Sprintf("the rule client seeing trade at %v%%", percent), func() bool {
		r, _ := c.rules.Rule("trade")
		return r.BluePercent == percent
	})
}

func TestDecisionMadeAtTheEdgeIsSeenAtEveryHop(t *testing.T) {
	for _, withOtel := range []bool{false, true} {
		t.Run(fmt.Sprintf("otelgrpc=%v", withOtel), func(t *testing.T) {
			c := newChain(t, withOtel)
			if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
				t.Fatal(err)
			}
			c.shift(t, 50)
			// The grid source decides blue for exactly half of every 10 calls, so the split
			// is exact; TestDecisionRateIsThePercent checks the real source's.
			traffic.SetRandom(c.rules, (&grid{n: 10}).draw)

			counts := map[string]int{}
			for i := 0; i < 20; i++ {
				got := c.call(t, context.Background())
				counts[got]++
				// gateway is in no channel and was called without baggage; the decision is
				// made on gateway's call to order and must reach inventory unchanged.
				if got != "gateway:none order:blue inventory:blue" && got != "gateway:none order:green inventory:green" {
					t.Fatalf("call %d: hops saw %q", i, got)
				}
			}
			if counts["gateway:none order:blue inventory:blue"] != 10 || counts["gateway:none order:green inventory:green"] != 10 {
				t.Fatalf("a 50%% split of 20 calls gave %v, want 10 each", counts)
			}

			// A decision the caller already carries is kept, whatever the percent says.
			c.shift(t, 0)
			ctx, err := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				if got := c.call(t, ctx); got != "gateway:blue order:blue inventory:blue" {
					t.Fatalf("sticky call %d: hops saw %q", i, got)
				}
			}
			if got := c.call(t, context.Background()); got != "gateway:none order:green inventory:green" {
				t.Fatalf("at 0%% a fresh call saw %q", got)
			}
			for _, h := range c.hops {
				if n := h.headers.Load(); n != 0 {
					t.Fatalf("%s received %d calls with more than one baggage header", h.name, n)
				}
			}
		})
	}
}

func TestServerInterceptorMergesSeveralBaggageHeaders(t *testing.T) {
	c := newChain(t, true) // otelgrpc's server handler alone would read only the first header
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"baggage", "tenant=acme", "baggage", deploy.BaggageKey+"=trade=blue")
	// Call inventory directly, without the client interceptor, so both headers arrive as sent.
	direct := dialPlain(t, c.cli, "inventory")
	resp, err := direct.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMessage() != "inventory:blue" {
		t.Fatalf("inventory saw %q from the second baggage header, want blue", resp.GetMessage())
	}
}

// dialPlain dials app through the resolver without any interceptor or stats handler.
func dialPlain(t *testing.T, cli *clientv3.Client, app string) greeterpb.GreeterClient {
	t.Helper()
	return testutil.Greeter(t, "switchyard:///"+app, resolver(t, cli))
}

// grid is a stand-in for a uniform random source in [0, 1): its draws are the midpoints of n
// equal cells, each once per n draws (from any number of goroutines), so "u·100 < p" holds
// for exactly p·n/100 of every n draws when that is a whole number.
type grid struct {
	n    uint64
	next atomic.Uint64
}

func (g *grid) draw() float64 { return (float64((g.next.Add(1)-1)%g.n) + 0.5) / float64(g.n) }

// The decision itself: over a uniform source, a call decides blue with probability exactly
// percent/100, for canaries as small as 0.1 %, and carries the decision in its context and
// outgoing baggage header; with the real random source a 50 % split gives both colors their
// share. (The interceptor runs alone here, with an invoker that records.)
func TestDecisionRateIsThePercent(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	c := &chain{cli: cli, rules: newClient(t, cli), ctl: newController(t, cli)}
	if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
		t.Fatal(err)
	}
	cc := testutil.Dial(t, "switchyard:///inventory", resolver(t, cli)) // never connects: the invoker is a stub
	icpt := c.rules.UnaryClientInterceptor()
	decide := func() deploy.Color {
		var color deploy.Color
		invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			var ok bool
			if color, ok = traffic.Decision(ctx, "trade"); !ok {
				t.Fatal("the interceptor made no decision for an app in an open channel")
			}
			md, _ := metadata.FromOutgoingContext(ctx)
			if h := md.Get("baggage"); len(h) != 1 || h[0] != deploy.BaggageKey+"=trade="+string(color) {
				t.Fatalf("outgoing baggage header %q for decision %s", h, color)
			}
			return nil
		}
		if err := icpt(context.Background(), "/m", nil, nil, cc, invoker); err != nil {
			t.Fatal(err)
		}
		return color
	}
	// The real source (math/rand/v2): 200 decisions at 50 % fall below 50 of either color
	// with probability 1e-13.
	c.shift(t, 50)
	counts := map[deploy.Color]int{}
	for range 200 {
		counts[decide()]++
	}
	if counts[deploy.Blue] < 50 || counts[deploy.Green] < 50 {
		t.Fatalf("a 50%% split of 200 decisions with the real random source gave %v", counts)
	}

	src := &grid{n: 1000}
	traffic.SetRandom(c.rules, src.draw)
	for _, p := range []float64{0, 0.1, 1, 10, 50, 99, 99.9, 100} {
		c.shift(t, p)
		src.next.Store(0)
		blue := 0
		for range src.n {
			if decide() == deploy.Blue {
				blue++
			}
		}
		if want := int(math.Round(p / 100 * float64(src.n))); blue != want {
			t.Errorf("at %v%%: %d of %d calls decided blue, want %d", p, blue, src.n, want)
		}
	}
}

// A 1 % canary end to end: calls from a client with the interceptor straight to inventory
// (one hop: the decision is made on the first call of a chain), 8 at a time, each deciding
// afresh. With the grid source exactly 1 in 100 is blue, and every call reaches the server
// with the color it was decided. (BenchmarkCanaryOfOnePercent runs this with the real random
// source and reports the blue share.)
func TestCanaryOfOnePercent(t *testing.T) {
	c := newChain(t, false)
	if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
		t.Fatal(err)
	}
	c.shift(t, 1)
	traffic.SetRandom(c.rules, (&grid{n: 100}).draw)
	inventory := dial(t, c.cli, c.rules, "inventory", false)
	blue, green, other := canaryCalls(t, inventory, 400, 8)
	if other != 0 || blue != 4 || green != 396 {
		t.Fatalf("1%% canary over 400 calls: %d blue, %d green, %d failed or not sticky; want 4, 396, 0", blue, green, other)
	}
}

// canaryCalls makes calls to inventory, workers at a time, and counts the colors the server
// saw; other counts failed calls and unexpected answers.
func canaryCalls(t testing.TB, inventory greeterpb.GreeterClient, calls, workers int64) (blue, green, other int64) {
	var nb, ng, no atomic.Int64
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= calls {
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				resp, err := inventory.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
				cancel()
				switch {
				case err != nil:
					no.Add(1)
				case resp.GetMessage() == "inventory:blue":
					nb.Add(1)
				case resp.GetMessage() == "inventory:green":
					ng.Add(1)
				default:
					no.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return nb.Load(), ng.Load(), no.Load()
}

func TestInterceptorPassesThroughWithoutChannelOrBaggage(t *testing.T) {
	c := newChain(t, false)
	// No channel open: nothing is decided and no baggage header is sent.
	for i := 0; i < 10; i++ {
		if got := c.call(t, context.Background()); got != "gateway:none order:none inventory:none" {
			t.Fatalf("hops saw %q with no release open", got)
		}
	}
}

// streamHop answers a server stream with the decision it sees on the stream's context.
type streamHop struct {
	greeterpb.UnimplementedGreeterServer
}

func (streamHop) SayHellos(req *greeterpb.HelloRequest, stream grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	color, ok := traffic.Decision(stream.Context(), "trade")
	if !ok {
		color = "none"
	}
	for i := int32(0); i < req.GetCount(); i++ {
		if err := stream.Send(&greeterpb.HelloReply{Message: string(color)}); err != nil {
			return err
		}
	}
	return nil
}

func TestStreamInterceptorsCarryTheDecision(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rules, ctl := newClient(t, cli), newController(t, cli)
	ln := testutil.Listen(t)
	s := grpc.NewServer(grpc.ChainStreamInterceptor(traffic.StreamServerInterceptor()))
	greeterpb.RegisterGreeterServer(s, streamHop{})
	go func() { _ = s.Serve(ln) }()
	defer s.Stop()
	register(t, cli, "order", ln.Addr().String())
	client := testutil.Greeter(t, "switchyard:///order", resolver(t, cli),
		grpc.WithChainStreamInterceptor(rules.StreamClientInterceptor()))

	colors := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
		defer cancel()
		st, err := client.SayHellos(ctx, &greeterpb.HelloRequest{Count: 3}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for {
			r, err := st.Recv()
			if err != nil {
				break
			}
			out = append(out, r.GetMessage())
		}
		return out
	}
	if got := fmt.Sprint(colors()); got != "[none none none]" {
		t.Fatalf("no release open, stream saw %s", got)
	}
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	c := &chain{rules: rules, ctl: ctl}
	c.shift(t, 100)
	if got := fmt.Sprint(colors()); got != "[blue blue blue]" {
		t.Fatalf("at 100%% the stream saw %s", got)
	}
	c.shift(t, 0)
	if got := fmt.Sprint(colors()); got != "[green green green]" {
		t.Fatalf("at 0%% the stream saw %s", got)
	}
}
