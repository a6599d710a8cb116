package balancer_test

import (
	"context"
	"net"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

// fallbackMeter points the global meter provider at a manual reader for the test (balancers
// built afterwards count into it) and returns a function that reads
// switchyard.balancer.sticky_fallbacks.
func fallbackMeter(t *testing.T) func() int64 {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	t.Cleanup(func() {
		otel.SetMeterProvider(prev)
		_ = mp.Shutdown(context.Background())
	})
	return func() int64 {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if m.Name == "switchyard.balancer.sticky_fallbacks" {
					for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
						n += dp.Value
					}
				}
			}
		}
		return n
	}
}

// Issue 12, case 3: at a canary the blue callee is SIGTERMed and replaced. It flags its
// answers offline (and keeps serving what reaches it) while its replacement is not registered
// yet, then while the replacement still connects. Requests decided blue must stay on blue.
func TestStickyUsesOfflineMarkedEndpointsOfItsColorBeforeCrossing(t *testing.T) {
	fallbacks := fallbackMeter(t)
	c := newCluster(t)
	old := c.start(colored("blue-1", deploy.Blue, 10))
	c.start(colored("green-1", deploy.Green, 10))
	client := c.dial()
	decided, err := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
	if err != nil {
		t.Fatal(err)
	}
	client.waitReady(context.Background(), "blue-1", "green-1")

	// blue-1 is being stopped: its first flagged answer marks it offline in the balancer.
	old.offline.Store(true)
	if seen := calls(t, client, decided, 1, 1); seen["blue-1"] != 1 {
		t.Fatalf("the call decided blue that should carry blue-1's flag went to %v", seen)
	}
	// Undecided requests leave it at once ...
	if seen := calls(t, client, context.Background(), 100, 2); seen["green-1"] != 100 {
		t.Fatalf("undecided requests after blue-1's flag went to %v; want all on green-1", seen)
	}
	// ... but blue-1 is the only blue that serves: requests decided blue still use it.
	if seen := calls(t, client, decided, 100, 4); seen["blue-1"] != 100 {
		t.Fatalf("replacement not registered yet: requests decided blue went to %v; want all on blue-1 (offline-marked, still serving)", seen)
	}

	// The replacement is registered but still connecting: blue-1 still serves them, no wait.
	repl := colored("blue-2", deploy.Blue, 10)
	repl.App, repl.Addr = "greeter", silentListener(t)
	c.register(repl)
	client.waitSubConn("blue-2", connectivity.Connecting)
	picker, _ := client.obs.latest()
	if seen := client.picks(picker, decided, fibRPCs); seen["blue-1"] != fibRPCs {
		t.Fatalf("replacement connecting: picks decided blue went to %v; want all on blue-1", seen)
	}
	if seen := calls(t, client, decided, 100, 4); seen["blue-1"] != 100 {
		t.Fatalf("replacement connecting: requests decided blue went to %v; want all on blue-1", seen)
	}

	// A blue that is not going offline is READY: it takes every request decided blue.
	c.start(colored("blue-3", deploy.Blue, 10))
	picker = client.waitReady(decided, "blue-3")
	if seen := client.picks(picker, decided, fibRPCs); seen["blue-3"] != fibRPCs {
		t.Fatalf("with blue-3 ready, picks decided blue went to %v; want all on blue-3", seen)
	}
	if n := fallbacks(); n != 0 {
		t.Fatalf("switchyard.balancer.sticky_fallbacks = %d, want 0: blue served throughout", n)
	}
}

// gatedListener accepts TCP connections (the kernel completes the handshake) but hands them
// to the gRPC server only once open is called, so the client stays CONNECTING until then.
type gatedListener struct {
	net.Listener
	gate   chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newGatedListener(t *testing.T) *gatedListener {
	return &gatedListener{Listener: testutil.Listen(t), gate: make(chan struct{}), closed: make(chan struct{})}
}

func (l *gatedListener) open() { close(l.gate) }

func (l *gatedListener) Accept() (net.Conn, error) {
	select {
	case <-l.gate:
		return l.Listener.Accept()
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *gatedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Issue 12, case 7: a new consumer whose first READY endpoint is drained (weight 0) while
// the weighted one still connects must wait for the weighted one, not send the drained
// endpoint calls.
func TestUndecidedWaitsForAWeightedEndpointRatherThanPickADrainedOne(t *testing.T) {
	c := newCluster(t)
	c.start(colored("blue-1", deploy.Blue, 0)) // blue drained: traffic weight 0
	ln := newGatedListener(t)
	addr, _ := testutil.ServeGreeterOn(t, ln, "green-1")
	green := colored("green-1", deploy.Green, 0)
	green.App, green.Addr = "greeter", addr
	c.register(green)

	client := c.dial()
	client.waitRecord("both records", func(in map[string]balancer.EndpointInfo) bool { return len(in) == 2 })
	client.waitSubConn("green-1", connectivity.Connecting)
	picker := client.waitState(connectivity.Ready) // blue-1 READY in the picker
	wait := "error: " + gbalancer.ErrNoSubConnAvailable.Error()
	if seen := client.picks(picker, context.Background(), fibRPCs); seen[wait] != fibRPCs {
		t.Fatalf("drained blue-1 READY, green-1 connecting: picks went to %v; want all to wait (ErrNoSubConnAvailable)", seen)
	}

	// Calls made now wait for green-1 and land on it once it is READY.
	const n = 20
	answers := make(chan string, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
			defer cancel()
			resp, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
			if err != nil {
				answers <- "error: " + err.Error()
				return
			}
			answers <- resp.GetInstance()
		}()
	}
	ln.open()
	seen := map[string]int{}
	for range n {
		seen[testutil.Receive(t, "an answer to a call made while green-1 connected", answers)]++
	}
	if seen["green-1"] != n {
		t.Fatalf("calls made while green-1 connected went to %v; want all on green-1", seen)
	}

	// The weighted endpoint failing (not connecting) is no reason to wait: the drained one
	// serves rather than fail.
	refused := closingListener(t)
	c2 := newCluster(t)
	c2.start(colored("blue-1", deploy.Blue, 0))
	g2 := colored("green-1", deploy.Green, 0)
	g2.App, g2.Addr = "greeter", refused
	c2.register(g2)
	client2 := c2.dial()
	client2.waitRecord("both records", func(in map[string]balancer.EndpointInfo) bool { return len(in) == 2 })
	client2.waitSubConn("green-1", connectivity.TransientFailure)
	if seen := calls(t, client2, context.Background(), 20, 2); seen["blue-1"] != 20 {
		t.Fatalf("green-1 failing, blue-1 drained: calls went to %v; want all on blue-1", seen)
	}
}

// Issue 12, case 7: weights near MaxFloat64 (registry validation bounds them, but any
// resolver can attach EndpointInfo) must not overflow the picker's running total, which sent
// every call to the last endpoint.
func TestHugeWeightsKeepTheirShares(t *testing.T) {
	infos := []balancer.EndpointInfo{
		{ID: "a", Weight: 1e308, TrafficWeight: 100},
		{ID: "b", Weight: 1e308, TrafficWeight: 100},
	}
	var eps []resolver.Endpoint
	for _, info := range infos {
		addr, _ := testutil.ServeGreeter(t, info.ID)
		eps = append(eps, balancer.SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}}, info))
	}
	obs, sc := newObserver(t, nil)
	r := manual.NewBuilderWithScheme("huge")
	r.InitialState(resolver.State{Endpoints: eps})
	cc := testutil.Dial(t, "huge:///greeter", grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(sc))
	cc.Connect()
	client := &client{GreeterClient: greeterpb.NewGreeterClient(cc), t: t, obs: obs}
	// Both in the picker (before the fix, this already failed: every pick went to b).
	picker := client.waitReady(context.Background(), "a", "b")
	seen := client.picks(picker, context.Background(), fibPicks)
	checkShare(t, "weights 1e308:1e308, picks of a", seen["a"], fibPicks, 0.5)
	checkShare(t, "weights 1e308:1e308, picks of b", seen["b"], fibPicks, 0.5)
	// One caller: the calls are exactly the weighted picks (doc.go, Load).
	got := calls(t, client, context.Background(), fibRPCs, 1)
	checkShare(t, "weights 1e308:1e308, calls to a", got["a"], fibRPCs, 0.5)
}
