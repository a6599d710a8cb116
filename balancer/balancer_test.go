package balancer_test

import (
	"context"
	"fmt"
	"math"
	"net"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/greeterpb"

	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// colored is an instance of the greeter in channel trade.
func colored(id string, c registry.Color, percent float64) registry.Instance {
	r := traffic.Rule{Releasing: true, BluePercent: percent}
	return registry.Instance{ID: id, Color: c, Channel: "trade", TrafficWeight: traffic.TrafficWeight(r, c)}
}

func TestSplitFollowsTheBluePercentAndReusesConnections(t *testing.T) {
	c := newCluster(t)
	blue := c.start(colored("blue-1", registry.ColorBlue, 50))
	green := c.start(colored("green-1", registry.ColorGreen, 50))
	client := c.dial()
	for _, p := range []float64{1, 10, 50, 99} {
		for _, in := range []*instance{blue, green} {
			color := registry.ColorBlue
			if in == green {
				color = registry.ColorGreen
			}
			err := in.reg.Update(context.Background(), func(r *registry.Instance) {
				r.TrafficWeight = traffic.TrafficWeight(traffic.Rule{Releasing: true, BluePercent: p}, color)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		c.waitRecord(fmt.Sprint(p, "%"), func(in []registry.Instance) bool {
			bw, gw := traffic.Weights(p)
			return len(in) == 2 && in[0].TrafficWeight == bw && in[1].TrafficWeight == gw
		})
		const n = 20_000
		seen := calls(t, client, context.Background(), n, 8)
		share := 100 * float64(seen["blue-1"]) / n
		t.Logf("blue %v%%: %d of %d calls went to blue (%.3f%%)", p, seen["blue-1"], n, share)
		if tol := max(0.1, p*0.05); math.Abs(share-p) > tol {
			t.Errorf("blue %v%%: blue got %.3f%% of calls, want within ±%.2f pp", p, share, tol)
		}
	}
	if b, g := blue.accepted.Load(), green.accepted.Load(); b != 1 || g != 1 {
		t.Fatalf("weight changes opened new connections: blue accepted %d, green %d; want 1 each", b, g)
	}
}

func TestOneColorIgnoresColorWeights(t *testing.T) {
	c := newCluster(t)
	c.start(colored("blue-1", registry.ColorBlue, 0)) // traffic weight 0, but no green exists
	c.start(colored("blue-2", registry.ColorBlue, 1))
	seen := calls(t, c.dial(), context.Background(), 2000, 4)
	if seen["blue-1"] < 900 || seen["blue-2"] < 900 {
		t.Fatalf("with one color present the split must be even, got %v", seen)
	}
}

func TestBaseWeightsAndAllZeroWeights(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Instance{ID: "big", Weight: 300})
	c.start(registry.Instance{ID: "small", Weight: 100})
	seen := calls(t, c.dial(), context.Background(), 4000, 4)
	if seen["big"] < 2900 || seen["big"] > 3100 {
		t.Fatalf("weights 300:100 gave %v", seen)
	}

	// Both colors drained (only a hand-edited etcd does that): pick evenly rather than fail.
	z := newCluster(t)
	z.start(colored("blue-1", registry.ColorBlue, 0))
	z.start(registry.Instance{ID: "green-1", Color: registry.ColorGreen, Channel: "trade", TrafficWeight: 0})
	seen = calls(t, z.dial(), context.Background(), 2000, 4)
	if seen["blue-1"] < 900 || seen["green-1"] < 900 {
		t.Fatalf("all weights 0 must split evenly, got %v", seen)
	}
}

func TestWarmupRampsLinearly(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Instance{ID: "old"})
	client := c.dial()
	calls(t, client, context.Background(), 10, 1) // connected
	const warmup = 3 * time.Second
	start := time.Now()
	c.start(registry.Instance{ID: "new", StartTime: start, Warmup: warmup})
	// Measure the new instance's share in windows; expected f/(1+f), f = uptime/warmup.
	for _, at := range []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 2250 * time.Millisecond, 3500 * time.Millisecond} {
		time.Sleep(time.Until(start.Add(at - 100*time.Millisecond)))
		from := time.Now()
		seen := calls(t, client, context.Background(), 600, 4)
		mid := from.Add(time.Since(from) / 2).Sub(start)
		f := min(max(float64(mid)/float64(warmup), 0.01), 1)
		want := f / (1 + f)
		got := float64(seen["new"]) / 600
		t.Logf("uptime %v: new instance got %.3f of calls, ramp says %.3f", mid.Round(time.Millisecond), got, want)
		if math.Abs(got-want) > 0.1*want+0.02 {
			t.Errorf("uptime %v: share %.3f, want %.3f ±10%%", mid.Round(time.Millisecond), got, want)
		}
	}
}

func TestStickyRequestsNeverCrossColors(t *testing.T) {
	c := newCluster(t)
	c.start(colored("blue-1", registry.ColorBlue, 0)) // blue drained: weight 0
	c.start(colored("blue-2", registry.ColorBlue, 0))
	c.start(colored("green-1", registry.ColorGreen, 0))
	c.start(colored("green-2", registry.ColorGreen, 0))
	client := c.dial()
	for _, color := range []registry.Color{registry.ColorBlue, registry.ColorGreen} {
		ctx, err := traffic.WithDecision(context.Background(), "trade", color)
		if err != nil {
			t.Fatal(err)
		}
		seen := calls(t, client, ctx, 2000, 4)
		id1, id2 := string(color)+"-1", string(color)+"-2"
		if seen[id1]+seen[id2] != 2000 || seen[id1] < 900 || seen[id2] < 900 {
			t.Fatalf("requests decided %s went to %v", color, seen)
		}
	}
	// Undecided requests follow the weights: blue is drained.
	seen := calls(t, client, context.Background(), 1000, 4)
	if seen["blue-1"]+seen["blue-2"] != 0 {
		t.Fatalf("undecided requests reached drained blue: %v", seen)
	}
}

func TestStickyFallbackWhenTheColorIsGone(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	defer otel.SetMeterProvider(prev)
	defer mp.Shutdown(context.Background())

	c := newCluster(t)
	blue := c.start(colored("blue-1", registry.ColorBlue, 50))
	c.start(colored("green-1", registry.ColorGreen, 50))
	client := c.dial()
	ctx, _ := traffic.WithDecision(context.Background(), "trade", registry.ColorBlue)
	if seen := calls(t, client, ctx, 100, 2); seen["blue-1"] != 100 {
		t.Fatalf("decided blue went to %v", seen)
	}
	if err := blue.reg.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitRecord("blue gone", func(in []registry.Instance) bool { return len(in) == 1 })
	if seen := calls(t, client, ctx, 100, 2); seen["green-1"] != 100 {
		t.Fatalf("with blue gone, decided-blue requests went to %v; want all on green", seen)
	}
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
	if n < 100 {
		t.Fatalf("switchyard.balancer.sticky_fallbacks = %d, want at least 100", n)
	}
}

func TestOfflineFlagStopsPicksAtOnce(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Instance{ID: "a"})
	b := c.start(registry.Instance{ID: "b"})
	client := c.dial()
	calls(t, client, context.Background(), 100, 1)

	b.offline.Store(true) // b starts answering with x-switchyard-offline: 1 (still serving)
	flagged := false
	for i := 0; i < 500; i++ { // one at a time: "after the first flagged response" is exact
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
	if seen := calls(t, client, context.Background(), 200, 2); seen["b"] != 0 {
		t.Fatalf("b got %d calls while still marked", seen["b"])
	}
	if err := b.reg.Update(context.Background(), func(in *registry.Instance) { in.Weight = 101 }); err != nil {
		t.Fatal(err)
	}
	c.waitRecord("b's new record", func(in []registry.Instance) bool { return len(in) == 2 && in[1].Weight == 101 })
	if seen := calls(t, client, context.Background(), 400, 2); seen["b"] < 150 {
		t.Fatalf("b's new record did not clear the mark: %v", seen)
	}
}

func TestMarkIsDroppedWhenTheEndpointLeaves(t *testing.T) {
	c := newCluster(t)
	c.start(registry.Instance{ID: "a"})
	b := c.start(registry.Instance{ID: "b"})
	client := c.dial()
	b.offline.Store(true)
	calls(t, client, context.Background(), 50, 1) // b answers flagged at least once
	b.offline.Store(false)
	if seen := calls(t, client, context.Background(), 100, 1); seen["b"] != 0 {
		t.Fatalf("b still picked after its flag: %v", seen)
	}
	// b leaves and comes back with the very same record (Register keeps start_time): had
	// the mark outlived b's departure, the identical record would not clear it.
	before := b.reg.Instance()
	if err := b.reg.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitRecord("b gone", func(in []registry.Instance) bool { return len(in) == 1 })
	if err := b.reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !b.reg.Instance().Equal(before) {
		t.Fatal("re-registration changed b's record; the test needs it identical")
	}
	c.waitRecord("b back", func(in []registry.Instance) bool { return len(in) == 2 })
	if seen := calls(t, client, context.Background(), 400, 2); seen["b"] < 150 {
		t.Fatalf("b is back but not picked: %v", seen)
	}
}

// silentListener accepts TCP connections and never answers, so gRPC stays CONNECTING.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
	c := newCluster(t)
	c.start(colored("green-1", registry.ColorGreen, 50))
	client := c.dial()
	calls(t, client, context.Background(), 10, 1) // green is ready

	// blue-1 is registered but still connecting: a request decided blue waits for it.
	reg := func(id, addr string) {
		in := colored(id, registry.ColorBlue, 50)
		in.App, in.Addr = "greeter", addr
		r, err := registry.NewRegistrar(registry.Config{Client: c.cli, Instance: in, Logger: silent})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
		if err := r.Register(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	reg("blue-1", silentListener(t))
	c.waitRecord("blue-1", func(in []registry.Instance) bool { return len(in) == 2 })
	decided, _ := traffic.WithDecision(context.Background(), "trade", registry.ColorBlue)
	ctx, cancel := context.WithTimeout(decided, 300*time.Millisecond)
	defer cancel()
	resp, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
	if err == nil {
		t.Fatalf("a request decided blue was answered by %s while blue was still connecting", resp.GetInstance())
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("decided blue while blue connects: %v, want it to wait (DeadlineExceeded)", err)
	}

	// Now blue's only instance refuses connections: crossing beats failing.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := ln.Addr().String()
	_ = ln.Close()
	c2 := newCluster(t)
	c2.start(colored("green-1", registry.ColorGreen, 50))
	c = c2
	client = c.dial()
	calls(t, client, context.Background(), 10, 1)
	reg("blue-2", refused)
	c.waitRecord("blue-2", func(in []registry.Instance) bool { return len(in) == 2 })
	time.Sleep(300 * time.Millisecond) // the dial fails at once: blue-2 in TRANSIENT_FAILURE
	if seen := calls(t, client, decided, 20, 1); seen["green-1"] != 20 {
		t.Fatalf("with blue failing, decided-blue requests went to %v; want green", seen)
	}
}
