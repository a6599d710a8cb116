package balancer_test

import (
	"context"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/metrictest"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// The balancer records on ResolverConfig.MeterProvider (carried to it in the resolver state):
// picks per picked endpoint's color and channel match the calls each server saw, an offline
// mark is counted once, a sticky fallback lands on the same provider, and closing the
// ClientConn takes the picks callback away.
func TestMetricsOnTheResolversMeterProvider(t *testing.T) {
	m := metrictest.New(t)
	c := newCluster(t)
	blue := c.start(colored("blue-1", deploy.Blue, 30))
	green := c.start(colored("green-1", deploy.Green, 30))
	conn := c.conn(func(rc *registry.ResolverConfig) { rc.MeterProvider = m.MP })
	client := greeterpb.NewGreeterClient(conn)
	decidedBlue, err := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
	if err != nil {
		t.Fatal(err)
	}
	calls(t, client, context.Background(), 200, 4) // undecided: split by weight
	calls(t, client, decidedBlue, 50, 2)           // sticky: blue only

	const pickOf = "switchyard.app=greeter,switchyard.channel=trade,switchyard.color="
	picks := m.Sums("switchyard.balancer.picks")
	if len(picks) != 2 || picks[pickOf+"blue"] != blue.served.Load() || picks[pickOf+"green"] != green.served.Load() {
		t.Fatalf("switchyard.balancer.picks = %v; the servers saw blue %d, green %d calls", picks, blue.served.Load(), green.served.Load())
	}
	if picks[pickOf+"blue"] < 50 || picks[pickOf+"green"] == 0 {
		t.Fatalf("switchyard.balancer.picks = %v; want at least the 50 decided-blue calls on blue, and green picked", picks)
	}

	// blue flags its answers offline: the first flagged answer takes it out, counted once.
	blue.offline.Store(true)
	for i := 0; blue.served.Load() == picks[pickOf+"blue"]; i++ {
		if i == 100 {
			t.Fatal("100 undecided calls and none reached blue")
		}
		calls(t, client, context.Background(), 1, 1)
	}
	calls(t, client, context.Background(), 50, 2) // on green now: no second mark
	if got := m.Sums("switchyard.balancer.offline_marks"); len(got) != 1 || got["switchyard.app=greeter"] != 1 {
		t.Fatalf("switchyard.balancer.offline_marks = %v, want {switchyard.app=greeter: 1}", got)
	}

	// blue leaves: decided-blue requests fall back to green, counted on the same provider.
	if err := blue.reg.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("decided-blue calls still reach blue 1000 calls after it deregistered")
		}
		before := green.served.Load()
		calls(t, client, decidedBlue, 1, 1)
		if green.served.Load() > before {
			break
		}
	}
	if got := m.Sums("switchyard.balancer.sticky_fallbacks"); got["switchyard.app=greeter"] < 1 {
		t.Fatalf("switchyard.balancer.sticky_fallbacks = %v, want at least 1 for app greeter", got)
	}
	// A pick of blue from the picker before its departure can find its connection closing:
	// gRPC picks again (counted again) before the call starts. So blue has at least its calls.
	picks = m.Sums("switchyard.balancer.picks")
	if picks[pickOf+"blue"] < blue.served.Load() || picks[pickOf+"green"] != green.served.Load() {
		t.Fatalf("switchyard.balancer.picks = %v; the servers saw blue %d calls (want at least as many picks), green %d calls", picks, blue.served.Load(), green.served.Load())
	}

	// Closed, the balancer leaves no callback in the provider.
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if got := m.Sums("switchyard.balancer.picks"); len(got) != 0 {
		t.Fatalf("switchyard.balancer.picks after the ClientConn closed = %v; want no data point (the callback unregistered)", got)
	}
}
