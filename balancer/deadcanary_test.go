package balancer_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"google.golang.org/grpc"
	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/jonboulle/clockwork"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/reach"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// decisionServer serves a greeter that records the decision for channel trade that each
// request carries after switchyard's server interceptor merged its baggage headers.
type decisionServer struct {
	mu   sync.Mutex
	seen []string // "blue", "green" or "" per request, in order
}

func (d *decisionServer) start(c *cluster, in registry.Record) {
	t := c.t
	t.Helper()
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		color, _ := sticky.Decision(ctx, "trade")
		d.mu.Lock()
		d.seen = append(d.seen, string(color))
		d.mu.Unlock()
		return h(ctx, req)
	}
	in.App = "greeter"
	in.Addr, _ = testutil.ServeGreeterOn(t, testutil.Listen(t), in.ID, grpc.ChainUnaryInterceptor(traffic.UnaryServerInterceptor(), record))
	c.register(in)
}

func (d *decisionServer) decisions() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.seen)
}

// blueCallerID names the blue caller on the reach board.
const blueCallerID = "caller/blue-1"

// decidedBlue returns a context decided blue for channel trade, its baggage also in the
// outgoing header (as traffic's client interceptor writes it), and the same context marked as
// served by blue code (what lifecycle's server interceptor does on a blue instance).
func decidedBlue(t *testing.T) (entry, blueCaller context.Context) {
	t.Helper()
	entry, err := traffic.WithDecision(context.Background(), "trade", deploy.Blue)
	if err != nil {
		t.Fatal(err)
	}
	entry = metadata.AppendToOutgoingContext(entry, "baggage", baggage.FromContext(entry).String())
	return entry, sticky.WithOwn(entry, &sticky.Own{Channel: "trade", Color: deploy.Blue, Instance: blueCallerID})
}

// wantRefused fails t unless err is the UNAVAILABLE a blue caller gets instead of crossing.
func wantRefused(t *testing.T, what string, err error) {
	t.Helper()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "does not cross to green") {
		t.Fatalf("%s: err = %v, want UNAVAILABLE saying a blue caller does not cross to green", what, err)
	}
}

// redecided returns the decision for trade in a pick's extra metadata, "" if none.
func redecided(t *testing.T, res gbalancer.PickResult) string {
	t.Helper()
	vals := res.Metadata.Get("baggage")
	if len(vals) == 0 {
		return ""
	}
	b, err := baggage.Parse(vals[len(vals)-1])
	if err != nil {
		t.Fatalf("the pick's baggage header %q does not parse: %v", vals, err)
	}
	color, _ := sticky.Lookup(b.Member(deploy.BaggageKey).Value(), "trade")
	return string(color)
}

// Issue 12, case 2: the blue instance of the called app dies (no cleanup: its record stays).
// A caller that is blue code must fail a request decided blue rather than send it to green
// (new code never calls old code); the chain's entry (no color) may cross, and then the
// request carries green downstream, so the rest of the chain stays on green. The connection's
// view on the reach board says blue no longer serves the app.
func TestDeadCanaryBlueCallerFailsEntryCrossesAndRedecides(t *testing.T) {
	c := newCluster(t)
	blue := c.start(colored("blue-1", deploy.Blue, 10))
	var green decisionServer
	green.start(c, colored("green-1", deploy.Green, 10))
	client := c.dial()
	entry, blueCaller := decidedBlue(t)
	client.waitReady(entry, "blue-1")
	client.waitReady(context.Background(), "blue-1", "green-1")

	blue.srv.Stop() // killed: the record stays, the connection fails
	client.waitSubConn("blue-1", connectivity.TransientFailure)

	before := len(green.decisions())
	_, err := client.SayHello(blueCaller, nil)
	wantRefused(t, "a call decided blue from a blue caller with blue dead", err)
	if got := green.decisions()[before:]; len(got) != 0 {
		t.Fatalf("green-1 received %d requests from a blue caller (decisions %v); new code called old code", len(got), got)
	}
	// The refused call noted its caller on the reach board: for it, blue does not serve
	// greeter; for another instance of the process, that connection does not count.
	testutil.Eventually(t, "the reach board to say blue does not serve greeter for the blue caller", func() bool {
		return slices.Contains(reach.Unserved("trade", deploy.Blue, blueCallerID), "greeter")
	})
	if u := reach.Unserved("trade", deploy.Blue, "other/blue-2"); len(u) != 0 {
		t.Fatalf("reach board, for an instance that never called through this connection: %v, want nothing", u)
	}

	seen := calls(t, client, entry, 20, 2)
	if seen["green-1"] != 20 {
		t.Fatalf("entry calls decided blue went to %v; want all on green-1", seen)
	}
	for i, d := range green.decisions()[before:] {
		if d != string(deploy.Green) {
			t.Fatalf("entry call %d reached green-1 decided %q; a crossing must re-decide green for the chain below", i, d)
		}
	}
}

// Issue 12, case 2: a blue instance that accepts TCP but never answers keeps its connection
// CONNECTING until gRPC's 20 s connect timeout. A request decided blue waits for it only
// for the sticky wait; then the blue caller's request fails and the entry's crosses.
func TestStickyWaitIsBounded(t *testing.T) {
	c := newCluster(t)
	stuck := colored("blue-1", deploy.Blue, 10)
	stuck.App, stuck.Addr = "greeter", silentListener(t)
	c.register(stuck)
	c.start(colored("green-1", deploy.Green, 10))
	clock := clockwork.NewFakeClock()
	client := c.dialClock(clock)
	entry, blueCaller := decidedBlue(t)
	client.waitRecord("both records", func(in map[string]balancer.EndpointInfo) bool { return len(in) == 2 })
	client.waitSubConn("blue-1", connectivity.Connecting)
	picker := client.waitReady(context.Background(), "green-1")

	wait := "error: " + gbalancer.ErrNoSubConnAvailable.Error()
	if seen := client.picks(picker, blueCaller, 100); seen[wait] != 100 {
		t.Fatalf("blue-1 connecting: picks decided blue went to %v; want all to wait for it", seen)
	}
	if u := reach.Unserved("trade", deploy.Blue, blueCallerID); slices.Contains(u, "greeter") {
		t.Fatalf("reach board says blue does not serve greeter while blue-1 connects within the wait")
	}

	picker = client.advance(balancer.DefaultStickyWait)
	for range 100 {
		_, err := picker.Pick(gbalancer.PickInfo{Ctx: blueCaller})
		wantRefused(t, "a pick decided blue from a blue caller after the sticky wait", err)
	}
	res, err := picker.Pick(gbalancer.PickInfo{Ctx: entry})
	if err != nil || client.obs.id(res.SubConn) != "green-1" || redecided(t, res) != string(deploy.Green) {
		t.Fatalf("entry pick decided blue after the sticky wait: %v, %v, redecided %q; want green-1, re-decided green", client.obs.id(res.SubConn), err, redecided(t, res))
	}
	if !slices.Contains(reach.Unserved("trade", deploy.Blue, blueCallerID), "greeter") {
		t.Fatal("reach board still says blue serves greeter after the sticky wait")
	}
	// A real call fails now, not after gRPC's connect timeout.
	ctx, cancel := context.WithTimeout(blueCaller, testutil.Deadline)
	defer cancel()
	_, err = client.SayHello(ctx, nil)
	wantRefused(t, "a call decided blue from a blue caller after the sticky wait", err)
}

// Issue 12, case 2: an instance whose record says it is degraded (it cannot keep its color's
// requests on its color downstream) takes no request decided for its color; undecided ones
// still reach it, and clearing the mark brings the decided ones back.
func TestDegradedEndpointTakesNoRequestOfItsColor(t *testing.T) {
	c := newCluster(t)
	degraded := colored("blue-1", deploy.Blue, 10)
	degraded.Degraded = "no serving blue instance of inventory"
	blue := c.start(degraded)
	c.start(colored("green-1", deploy.Green, 10))
	client := c.dial()
	entry, blueCaller := decidedBlue(t)
	picker := client.waitReady(context.Background(), "blue-1", "green-1")

	if seen := client.picks(picker, entry, 100); seen["green-1"] != 100 {
		t.Fatalf("blue-1 degraded: entry picks decided blue went to %v; want all on green-1", seen)
	}
	for range 10 {
		_, err := picker.Pick(gbalancer.PickInfo{Ctx: blueCaller})
		wantRefused(t, "a pick decided blue from a blue caller with the only blue degraded", err)
	}
	if !slices.Contains(reach.Unserved("trade", deploy.Blue, blueCallerID), "greeter") {
		t.Fatal("reach board says blue serves greeter though its only blue is degraded")
	}

	if err := blue.reg.Update(context.Background(), func(in *registry.Record) { in.Degraded = "" }); err != nil {
		t.Fatal(err)
	}
	picker = client.waitReady(entry, "blue-1")
	if seen := client.picks(picker, blueCaller, 100); seen["blue-1"] != 100 {
		t.Fatalf("blue-1 no longer degraded: picks decided blue went to %v; want all on blue-1", seen)
	}
}

func TestParseConfigStickyWait(t *testing.T) {
	b := gbalancer.Get(balancer.Name).(gbalancer.ConfigParser)
	for _, ok := range []string{`{}`, `{"stickyWait":"5s"}`, `{"stickyWait":"0.25s"}`, `{"stickyWait":"0s"}`,
		`{"loadAware":false}`, `{"loadAware":true,"stickyWait":"1s"}`} {
		if _, err := b.ParseConfig(json.RawMessage(ok)); err != nil {
			t.Errorf("ParseConfig(%s) = %v, want it accepted", ok, err)
		}
	}
	for js, want := range map[string]string{
		`{"stickyWait":5}`:     "duration string in seconds",
		`{"stickyWait":"5m"}`:  "duration string in seconds",
		`{"stickyWait":"-1s"}`: "non-negative",
		`{"wait":"1s"}`:        `unknown option "wait"`,
		`{"loadAware":"no"}`:   "loadAware must be true or false",
		`[]`:                   "not a JSON object",
	} {
		if _, err := b.ParseConfig(json.RawMessage(js)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) = %v, want an error saying %q", js, err, want)
		}
	}
}

// Issue 12, case 2, a double fault: the decided color's only instance is degraded and the
// other color has none. The entry's request goes to what there is, keeping its decision, so
// the degraded instance (code of that color) refuses further down rather than be handed a
// request re-decided for the other color, which it would carry to old code.
func TestCrossingWithNothingToCrossToKeepsTheDecision(t *testing.T) {
	c := newCluster(t)
	degraded := colored("blue-1", deploy.Blue, 10)
	degraded.Degraded = "no serving blue instance of inventory"
	c.start(degraded)
	client := c.dial()
	entry, _ := decidedBlue(t)
	picker := client.waitReady(context.Background(), "blue-1")
	for range 10 {
		res, err := picker.Pick(gbalancer.PickInfo{Ctx: entry})
		if err != nil || client.obs.id(res.SubConn) != "blue-1" {
			t.Fatalf("entry pick decided blue, only a degraded blue: %v, %v; want blue-1", client.obs.id(res.SubConn), err)
		}
		if d := redecided(t, res); d != "" {
			t.Fatalf("entry pick decided blue, nothing to cross to: re-decided %q; want the decision kept", d)
		}
	}
}

// FuzzParseConfig: any policy config is refused with an error naming the policy's package, or
// accepted with a non-negative sticky wait; nothing panics.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{`{}`, `{"stickyWait":"5s"}`, `{"stickyWait":"0.25s"}`, `{"stickyWait":5}`,
		`{"stickyWait":"-1s"}`, `{"stickyWait":"9999999999999999s"}`, `{"wait":"1s"}`, `[]`, `null`, ``} {
		f.Add(s)
	}
	b := gbalancer.Get(balancer.Name).(gbalancer.ConfigParser)
	f.Fuzz(func(t *testing.T, js string) {
		cfg, err := b.ParseConfig(json.RawMessage(js))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "switchyard balancer: ") {
				t.Fatalf("ParseConfig(%q): error without the package prefix: %v", js, err)
			}
			return
		}
		if cfg == nil {
			t.Fatalf("ParseConfig(%q) accepted it but returned no config", js)
		}
	})
}

// An offline mark ends only with a newer record of the instance: a consumer that applies the
// rules itself (registry.ResolverConfig.Rules) changes an endpoint's channel and traffic
// weight at every shift, and that must not bring a draining instance back.
func TestOfflineMarkOutlivesARuleChange(t *testing.T) {
	flagging := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(deploy.OfflineHeader, "1"))
		return h(ctx, req)
	})
	aAddr, _ := testutil.ServeGreeterOn(t, testutil.Listen(t), "a", flagging)
	bAddr, _ := testutil.ServeGreeter(t, "b")
	endpoints := func(aTW float64, aEpoch int64) resolver.State {
		a := balancer.EndpointInfo{ID: "a", Color: "blue", Channel: "trade", Weight: 100, TrafficWeight: aTW, Epoch: aEpoch}
		b := balancer.EndpointInfo{ID: "b", Color: "green", Channel: "trade", Weight: 100, TrafficWeight: 100, Epoch: 1}
		return resolver.State{Endpoints: []resolver.Endpoint{
			balancer.SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: aAddr}}}, a),
			balancer.SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: bAddr}}}, b),
		}}
	}
	obs, sc := newObserver(t, nil)
	r := manual.NewBuilderWithScheme("marks")
	r.InitialState(endpoints(100, 1))
	cc := testutil.Dial(t, "marks:///greeter", grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(sc))
	cc.Connect()
	client := &client{GreeterClient: greeterpb.NewGreeterClient(cc), t: t, obs: obs}
	client.waitReady(context.Background(), "a", "b")
	testutil.Eventually(t, "a flagged answer marking a offline", func() bool {
		resp, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{})
		return err == nil && resp.GetInstance() == "a"
	})
	picker := client.waitPicks("a out of the picker", context.Background(), func(seen map[string]int) bool { return seen["a"] == 0 })

	r.UpdateState(endpoints(20, 1)) // a shift: only the traffic weight changes
	picker = client.waitRecord("a's new traffic weight", func(in map[string]balancer.EndpointInfo) bool { return in["a"].TrafficWeight == 20 })
	if seen := client.picks(picker, context.Background(), 100); seen["a"] != 0 {
		t.Fatalf("after a rule change alone, the offline-marked a got %d of 100 picks; want 0", seen["a"])
	}
	r.UpdateState(endpoints(20, 2)) // a new registration
	client.waitReady(context.Background(), "a", "b")
}
