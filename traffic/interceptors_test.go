package traffic_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// hop is one service of the chain: it records the decision and the number of baggage
// headers it received, and calls the next hop (if any) with the handler's context.
type hop struct {
	greeterpb.UnimplementedGreeterServer
	name    string
	next    greeterpb.GreeterClient
	headers atomic.Int64 // calls that arrived with more than one baggage header
}

func (h *hop) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get("baggage")) > 1 {
		h.headers.Add(1)
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
	rules *traffic.Client
	ctl   *traffic.Controller
	entry greeterpb.GreeterClient // calls gateway
	hops  []*hop
}

// newChain starts gateway → order → inventory, each registered in etcd and dialed through
// switchyard:///<app> with the traffic interceptors; withOtel adds otelgrpc handlers with a
// baggage propagator on every client and server.
func newChain(t *testing.T, withOtel bool) *chain {
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

func serve(t *testing.T, cli *clientv3.Client, app string, h *hop, withOtel bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(traffic.UnaryServerInterceptor())}
	if withOtel {
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithPropagators(propagator))))
	}
	s := grpc.NewServer(opts...)
	greeterpb.RegisterGreeterServer(s, h)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	reg, err := registry.NewRegistrar(registry.Config{Client: cli, Logger: quiet(),
		Instance: registry.Instance{App: app, ID: app + "-1", Addr: ln.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	if err := reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func dial(t testing.TB, cli *clientv3.Client, rules *traffic.Client, app string, withOtel bool) greeterpb.GreeterClient {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.DialOption{grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(rules.UnaryClientInterceptor())}
	if withOtel {
		opts = append(opts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithPropagators(propagator))))
	}
	cc, err := grpc.NewClient("switchyard:///"+app, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return greeterpb.NewGreeterClient(cc)
}

func (c *chain) call(t testing.TB, ctx context.Context) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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
	deadline := time.Now().Add(5 * time.Second)
	for r, _ := c.rules.Rule("trade"); r.BluePercent != percent; r, _ = c.rules.Rule("trade") {
		if time.Now().After(deadline) {
			t.Fatalf("rule client did not see %v%%", percent)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDecisionMadeAtTheEdgeIsSeenAtEveryHop(t *testing.T) {
	for _, withOtel := range []bool{false, true} {
		t.Run(fmt.Sprintf("otelgrpc=%v", withOtel), func(t *testing.T) {
			c := newChain(t, withOtel)
			if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
				t.Fatal(err)
			}
			c.shift(t, 50)

			counts := map[string]int{}
			for i := 0; i < 200; i++ {
				got := c.call(t, context.Background())
				counts[got]++
				// gateway is in no channel and was called without baggage; the decision is
				// made on gateway's call to order and must reach inventory unchanged.
				if got != "gateway:none order:blue inventory:blue" && got != "gateway:none order:green inventory:green" {
					t.Fatalf("call %d: hops saw %q", i, got)
				}
			}
			if counts["gateway:none order:blue inventory:blue"] < 50 || counts["gateway:none order:green inventory:green"] < 50 {
				t.Fatalf("a 50%% split gave %v", counts)
			}

			// A decision the caller already carries is kept, whatever the percent says.
			c.shift(t, 0)
			ctx, err := traffic.WithDecision(context.Background(), "trade", registry.ColorBlue)
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
		"baggage", "tenant=acme", "baggage", traffic.BaggageKey+"=trade=blue")
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
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("switchyard:///"+app, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return greeterpb.NewGreeterClient(cc)
}

func TestCanaryOfOnePercent(t *testing.T) {
	c := newChain(t, false)
	if _, err := c.ctl.Open(context.Background(), "trade", []string{"order", "inventory"}); err != nil {
		t.Fatal(err)
	}
	c.shift(t, 1)
	// 50,000 calls, 8 at a time, from a client with the interceptor straight to inventory
	// (one hop: the decision is made on the first call of a chain); every one decides afresh.
	inventory := dial(t, c.cli, c.rules, "inventory", false)
	const calls, workers = 50_000, 8
	var blue, green, other atomic.Int64
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= calls {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := inventory.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
				cancel()
				switch {
				case err != nil:
					other.Add(1)
				case resp.GetMessage() == "inventory:blue":
					blue.Add(1)
				case resp.GetMessage() == "inventory:green":
					green.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	share := 100 * float64(blue.Load()) / calls
	t.Logf("1%% canary: %d blue, %d green of %d calls: %.3f%% blue", blue.Load(), green.Load(), calls, share)
	if other.Load() != 0 {
		t.Fatalf("%d calls failed or were not sticky", other.Load())
	}
	if share < 0.7 || share > 1.3 {
		t.Fatalf("blue share %.3f%%, want 1%% ± 0.3 pp", share)
	}
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.ChainStreamInterceptor(traffic.StreamServerInterceptor()))
	greeterpb.RegisterGreeterServer(s, streamHop{})
	go func() { _ = s.Serve(ln) }()
	defer s.Stop()
	reg, err := registry.NewRegistrar(registry.Config{Client: cli, Logger: quiet(),
		Instance: registry.Instance{App: "order", ID: "order-1", Addr: ln.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(context.Background())
	if err := reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	rb, _ := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: quiet()})
	cc, err := grpc.NewClient("switchyard:///order", grpc.WithResolvers(rb),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainStreamInterceptor(rules.StreamClientInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := greeterpb.NewGreeterClient(cc)

	colors := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
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
