package balancer_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// colored is an instance of the greeter in channel trade.
func colored(id string, c deploy.Color, percent float64) registry.Record {
	r := traffic.Rule{Releasing: true, BluePercent: percent}
	return registry.Record{ID: id, Color: c, Channel: "trade", TrafficWeight: traffic.TrafficWeight(r, c)}
}

// setBluePercent updates the traffic weights of blue and green as a release at p % blue does.
func setBluePercent(t testing.TB, p float64, blue, green *instance) {
	t.Helper()
	for in, color := range map[*instance]deploy.Color{blue: deploy.Blue, green: deploy.Green} {
		err := in.reg.Update(context.Background(), func(r *registry.Record) {
			r.TrafficWeight = traffic.TrafficWeight(traffic.Rule{Releasing: true, BluePercent: p}, color)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// The split is exact at picker level (any fibPicks consecutive picks give blue p % ±2 picks,
// see fibRPCs), so the calls only show that each weight change reaches the channel's picker
// without new connections. BenchmarkSplitAccuracy measures the split over many calls.
func TestSplitFollowsTheBluePercentAndReusesConnections(t *testing.T) {
	c := newCluster(t)
	blue := c.start(colored("blue-1", deploy.Blue, 50))
	green := c.start(colored("green-1", deploy.Green, 50))
	client := c.dial()
	client.waitReady(context.Background(), "blue-1", "green-1")
	for _, p := range []float64{1, 10, 50, 99} {
		setBluePercent(t, p, blue, green)
		bw, gw := traffic.Weights(p)
		picker := client.waitRecord(fmt.Sprint("blue ", p, "%"), func(in map[string]balancer.EndpointInfo) bool {
			return in["blue-1"].TrafficWeight == bw && in["green-1"].TrafficWeight == gw
		})
		seen := client.picks(picker, context.Background(), fibPicks)
		if seen["blue-1"]+seen["green-1"] != fibPicks {
			t.Fatalf("blue %v%%: picks went to %v", p, seen)
		}
		checkShare(t, fmt.Sprintf("blue %v%%: picks of blue", p), seen["blue-1"], fibPicks, p/100)

		seen = calls(t, client, context.Background(), fibRPCs, 4)
		t.Logf("blue %v%%: %d of %d calls went to blue", p, seen["blue-1"], fibRPCs)
		checkShare(t, fmt.Sprintf("blue %v%%: calls to blue", p), seen["blue-1"], fibRPCs, p/100)
	}
	if b, g := blue.accepted.Load(), green.accepted.Load(); b != 1 || g != 1 {
		t.Fatalf("weight changes opened new connections: blue accepted %d, green %d; want 1 each", b, g)
	}
}

func TestOneColorIgnoresColorWeights(t *testing.T) {
	c := newCluster(t)
	c.start(colored("blue-1", deploy.Blue, 0)) // traffic weight 0, but no green exists
	c.start(colored("blue-2", deploy.Blue, 1))
	client := c.dial()
	picker := client.waitReady(context.Background(), "blue-1", "blue-2")
	checkShare(t, "picks of blue-1", client.picks(picker, context.Background(), fibPicks)["blue-1"], fibPicks, 0.5)
	// One caller: no endpoint ever holds 2 calls, so the calls are exactly the weighted picks.
	// Concurrent callers' shares within a color follow what each endpoint can take (doc.go, Load).
	seen := calls(t, client, context.Background(), fibRPCs, 1)
	checkShare(t, "calls to blue-1", seen["blue-1"], fibRPCs, 0.5)
	checkShare(t, "calls to blue-2", seen["blue-2"], fibRPCs, 0.5)
}

func TestBaseWeightsAndAllZeroWeights(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Record{ID: "big", Weight: 300})
	c.start(registry.Record{ID: "small", Weight: 100})
	client := c.dial()
	picker := client.waitReady(context.Background(), "big", "small")
	checkShare(t, "weights 300:100, picks of big", client.picks(picker, context.Background(), fibPicks)["big"], fibPicks, 0.75)
	// One caller: no endpoint ever holds 2 calls, so the calls are exactly the weighted picks.
	// Concurrent callers' shares within a color follow what each endpoint can take (doc.go, Load).
	seen := calls(t, client, context.Background(), fibRPCs, 1)
	checkShare(t, "weights 300:100, calls to big", seen["big"], fibRPCs, 0.75)
	checkShare(t, "weights 300:100, calls to small", seen["small"], fibRPCs, 0.25)

	// Both colors drained (only a hand-edited etcd does that): pick evenly rather than fail.
	z := newCluster(t)
	z.start(colored("blue-1", deploy.Blue, 0))
	z.start(registry.Record{ID: "green-1", Color: deploy.Green, Channel: "trade", TrafficWeight: 0})
	zc := z.dial()
	zc.waitReady(context.Background(), "blue-1", "green-1")
	seen = calls(t, zc, context.Background(), fibRPCs, 4)
	checkShare(t, "all weights 0, calls to blue-1", seen["blue-1"], fibRPCs, 0.5)
	checkShare(t, "all weights 0, calls to green-1", seen["green-1"], fibRPCs, 0.5)
}

// The ramp on a fake clock: the balancer's warmup factor and the timer that refreshes the
// picker while an instance warms both run on it, so uptime is exact.
func TestWarmupRampsLinearly(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := clockwork.NewFakeClockAt(start)
	c := newCluster(t)
	c.start(registry.Record{ID: "old"})
	client := c.dialClock(clock)
	client.waitReady(context.Background(), "old")
	const warmup = time.Minute
	c.start(registry.Record{ID: "new", StartTime: start, Warmup: warmup})
	picker := client.waitReady(context.Background(), "old", "new")
	// new warms, so the balancer has armed its refresh timer on the clock.
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	if err := clock.BlockUntilContext(ctx, 1); err != nil {
		t.Fatalf("no warmup refresh timer on the balancer's clock: %v", err)
	}
	// The new instance's share is f/(1+f), f = clamp(uptime/warmup, 0.01, 1).
	for _, pct := range []int{0, 25, 50, 75, 100} {
		if pct > 0 {
			picker = client.advance(warmup / 4)
		}
		f := max(float64(pct)/100, 0.01)
		want := f / (1 + f)
		checkShare(t, fmt.Sprintf("uptime %d%%: picks of the new instance", pct),
			client.picks(picker, context.Background(), fibPicks)["new"], fibPicks, want)
		if pct == 25 { // end to end: the calls of one caller follow the ramp too (doc.go, Load)
			seen := calls(t, client, context.Background(), fibRPCs, 1)
			t.Logf("uptime 25%%: new instance got %d of %d calls, ramp says %.1f", seen["new"], fibRPCs, want*fibRPCs)
			checkShare(t, "uptime 25%: calls to the new instance", seen["new"], fibRPCs, want)
		}
		if pct < 100 {
			if err := clock.BlockUntilContext(ctx, 1); err != nil {
				t.Fatalf("uptime %d%%: the balancer stopped refreshing the ramp: %v", pct, err)
			}
		}
	}
}

func TestStickyRequestsNeverCrossColors(t *testing.T) {
	c := newCluster(t)
	c.start(colored("blue-1", deploy.Blue, 0)) // blue drained: weight 0
	c.start(colored("blue-2", deploy.Blue, 0))
	c.start(colored("green-1", deploy.Green, 0))
	c.start(colored("green-2", deploy.Green, 0))
	client := c.dial()
	decided := map[deploy.Color]context.Context{}
	for _, color := range []deploy.Color{deploy.Blue, deploy.Green} {
		ctx, err := traffic.WithDecision(context.Background(), "trade", color)
		if err != nil {
			t.Fatal(err)
		}
		decided[color] = ctx
		client.waitReady(ctx, string(color)+"-1", string(color)+"-2")
	}
	// All four READY: no new picker (with its endpoints in another order) during the calls.
	for _, color := range []deploy.Color{deploy.Blue, deploy.Green} {
		ctx := decided[color]
		id1, id2 := string(color)+"-1", string(color)+"-2"
		seen := calls(t, client, ctx, fibRPCs, 4)
		if seen[id1]+seen[id2] != fibRPCs {
			t.Fatalf("requests decided %s went to %v", color, seen)
		}
		// Within the color, one caller's calls are exactly the weighted picks (doc.go, Load).
		seen = calls(t, client, ctx, fibRPCs, 1)
		checkShare(t, "requests decided "+string(color)+" to "+id1, seen[id1], fibRPCs, 0.5)
		checkShare(t, "requests decided "+string(color)+" to "+id2, seen[id2], fibRPCs, 0.5)
	}
	// Undecided requests follow the weights: blue is drained.
	seen := calls(t, client, context.Background(), fibRPCs, 4)
	if seen["blue-1"]+seen["blue-2"] != 0 {
		t.Fatalf("undecided requests reached drained blue: %v", seen)
	}
	seen = calls(t, client, context.Background(), fibRPCs, 1)
	checkShare(t, "undecided requests to green-1", seen["green-1"], fibRPCs, 0.5)
}

func TestStickyFallbackWhenTheColorIsGone(t *testing.T) {
	fallbacks := fallbackMeter(t)

	c := newCluster(t)
	blue := c.start(colored("blue-1", deploy.Blue, 50))
	c.start(colored("green-1", deploy.Green, 50))
	client := c.dial()
	ctx, _ := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
	client.waitReady(context.Background(), "blue-1", "green-1")
	if seen := calls(t, client, ctx, 100, 2); seen["blue-1"] != 100 {
		t.Fatalf("decided blue went to %v", seen)
	}
	if err := blue.reg.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	client.waitRecord("blue gone", func(in map[string]balancer.EndpointInfo) bool { _, ok := in["blue-1"]; return !ok })
	if seen := calls(t, client, ctx, 100, 2); seen["green-1"] != 100 {
		t.Fatalf("with blue gone, decided-blue requests went to %v; want all on green", seen)
	}
	if n := fallbacks(); n < 100 {
		t.Fatalf("switchyard.balancer.sticky_fallbacks = %d, want at least 100", n)
	}
}

func TestOfflineFlagStopsPicksAtOnce(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Record{ID: "a"})
	b := c.start(registry.Record{ID: "b"})
	client := c.dial()
	// Both READY first: with b the only ready endpoint, its mark could not take it out.
	client.waitReady(context.Background(), "a", "b")

	b.offline.Store(true) // b starts answering with x-switchyard-offline: 1 (still serving)
	flagged := false
	for i := 0; i < 144; i++ { // one at a time: "after the first flagged response" is exact
		seen := calls(t, client, context.Background(), 1, 1)
		if seen["b"] == 1 && flagged {
			t.Fatalf("call %d reached b after its first flagged response", i)
		}
		flagged = flagged || seen["b"] == 1
	}
	if !flagged {
		t.Fatal("b never answered, so the flag was never seen")
	}

	// The mark stays until b's record changes (here: re-registered with a new weight).
	b.offline.Store(false)
	if seen := calls(t, client, context.Background(), 100, 2); seen["b"] != 0 {
		t.Fatalf("b got %d calls while still marked", seen["b"])
	}
	if err := b.reg.Update(context.Background(), func(in *registry.Record) { in.Weight = 101 }); err != nil {
		t.Fatal(err)
	}
	picker := client.waitRecord("b's new record", func(in map[string]balancer.EndpointInfo) bool { return in["b"].Weight == 101 })
	checkShare(t, "b's new record: picks of b", client.picks(picker, context.Background(), fibPicks)["b"], fibPicks, 101.0/201)
	seen := calls(t, client, context.Background(), fibRPCs, 2)
	checkShare(t, "b's new record: calls to b", seen["b"], fibRPCs, 101.0/201)
}

func TestMarkIsDroppedWhenTheEndpointLeaves(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Record{ID: "a"})
	b := c.start(registry.Record{ID: "b"})
	client := c.dial()
	client.waitReady(context.Background(), "a", "b")
	b.offline.Store(true)
	if seen := calls(t, client, context.Background(), 50, 1); seen["b"] == 0 {
		t.Fatalf("b never answered, so the flag was never seen: %v", seen)
	}
	b.offline.Store(false)
	if seen := calls(t, client, context.Background(), 100, 1); seen["b"] != 0 {
		t.Fatalf("b still picked after its flag: %v", seen)
	}
	// b leaves and comes back with the very same record (Register keeps start_time): had
	// the mark outlived b's departure, the identical record would not clear it.
	before := b.reg.Record()
	if err := b.reg.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	client.waitRecord("b gone", func(in map[string]balancer.EndpointInfo) bool { _, ok := in["b"]; return !ok })
	if err := b.reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !b.reg.Record().Equal(before) {
		t.Fatal("re-registration changed b's record; the test needs it identical")
	}
	client.waitRecord("b back", func(in map[string]balancer.EndpointInfo) bool { _, ok := in["b"]; return ok })
	// b reconnects; a mark that outlived its departure would keep it out of every picker.
	client.waitPicks("b picked again (it is back with the record it was marked under)", context.Background(),
		func(seen map[string]int) bool { return seen["b"] > 0 })
	seen := calls(t, client, context.Background(), fibRPCs, 2)
	checkShare(t, "b back: calls to b", seen["b"], fibRPCs, 0.5)
}

// silentListener accepts TCP connections and never answers, so gRPC stays CONNECTING.
// closingListener returns the address of a listener that closes every connection it
// accepts, so a dial to it fails at once (TRANSIENT_FAILURE). The test keeps the port: a
// closed port could be taken by another test's server meanwhile and then answer.
func closingListener(t *testing.T) string {
	t.Helper()
	ln := testutil.Listen(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String()
}

func silentListener(t *testing.T) string {
	t.Helper()
	ln := testutil.Listen(t)
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

func TestStickyWaitsForItsColorToConnectAndFallsBackWhenItFails(t *testing.T) {
	decided, _ := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
	blueAt := func(c *cluster, id, addr string) {
		in := colored(id, deploy.Blue, 50)
		in.App, in.Addr = "greeter", addr
		c.register(in)
	}

	// blue-1 is registered but still connecting: a request decided blue waits for it.
	c := newCluster(t)
	c.start(colored("green-1", deploy.Green, 50))
	client := c.dial()
	client.waitReady(context.Background(), "green-1")
	blueAt(c, "blue-1", silentListener(t))
	picker := client.waitRecord("blue-1", func(in map[string]balancer.EndpointInfo) bool { _, ok := in["blue-1"]; return ok })
	if seen := client.picks(picker, decided, 100); seen["error: "+gbalancer.ErrNoSubConnAvailable.Error()] != 100 {
		t.Fatalf("picks decided blue while blue connects: %v, want all to wait (ErrNoSubConnAvailable)", seen)
	}
	ctx, cancel := context.WithTimeout(decided, 100*time.Millisecond)
	defer cancel()
	resp, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
	if err == nil {
		t.Fatalf("a request decided blue was answered by %s while blue was still connecting", resp.GetInstance())
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("decided blue while blue connects: %v, want it to wait (DeadlineExceeded)", err)
	}

	// Now blue's only instance refuses connections: crossing beats failing.
	refused := closingListener(t)
	c2 := newCluster(t)
	c2.start(colored("green-1", deploy.Green, 50))
	client = c2.dial()
	client.waitReady(context.Background(), "green-1")
	blueAt(c2, "blue-2", refused)
	client.waitRecord("blue-2", func(in map[string]balancer.EndpointInfo) bool { _, ok := in["blue-2"]; return ok })
	client.waitSubConn("blue-2", connectivity.TransientFailure) // the dial fails at once
	if seen := calls(t, client, decided, 20, 1); seen["green-1"] != 20 {
		t.Fatalf("with blue failing, decided-blue requests went to %v; want green", seen)
	}
}
