package dashboard_test

import (
	"context"
	"math"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// greeter answers SayHello with its instance ID; every failEvery-th call (0: none) fails
// with codes.Internal, a server-side failure.
type greeter struct {
	greeterpb.UnimplementedGreeterServer
	id        string
	failEvery int64
	calls     atomic.Int64
}

func (g *greeter) SayHello(context.Context, *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	if n := g.calls.Add(1); g.failEvery > 0 && n%g.failEvery == 0 {
		return nil, status.Error(codes.Internal, "boom")
	}
	return &greeterpb.HelloReply{Instance: g.id}, nil
}

// instance starts a lifecycle instance of app with color, serving a greeter that fails every
// failEvery-th call, and stops it at cleanup.
func instance(t *testing.T, cli *clientv3.Client, app, id string, color deploy.Color, failEvery int64) *lifecycle.Instance {
	t.Helper()
	inst, err := lifecycle.New(lifecycle.Config{
		Client: cli, App: app, ID: id, Color: color, Version: "v-" + string(color), Warmup: -1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 50 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 3 * time.Second,
		TTL: 2 * time.Second, Logger: testutil.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &greeter{id: id, failEvery: failEvery})
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return inst
}

// dial is a greeter client of switchyard:///app through the registry resolver and the
// weighted balancer, which split by the records' traffic weights.
func dial(t *testing.T, cli *clientv3.Client, app string) greeterpb.GreeterClient {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return testutil.Greeter(t, "switchyard:///"+app, grpc.WithResolvers(rb))
}

// A release of two apps with real lifecycle instances: the view shows each app's requests on
// the colors that served them in the rule's split, the errors on the color that failed them,
// crossings on the color that got requests decided for the other, instances that do not
// answer as such without holding up the others, the rule's events, and the drained color
// once the rule drains it.
func TestAReleaseAsTheDashboardSeesIt(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 30); err != nil {
		t.Fatal(err)
	}
	instance(t, cli, "order", "order-blue", deploy.Blue, 0)
	instance(t, cli, "order", "order-green", deploy.Green, 4) // a quarter of green's calls fail
	invBlue := instance(t, cli, "inventory", "inventory-blue", deploy.Blue, 0)
	instance(t, cli, "inventory", "inventory-green", deploy.Green, 0)
	// Two more blue instances of order that never answer: one accepts connections and says
	// nothing, the other's port is closed.
	silent := testutil.Listen(t)
	register(t, cli, registry.Record{App: "order", ID: "order-silent", Addr: "127.0.0.1:1", Admin: silent.Addr().String(), Color: deploy.Blue})
	closed := testutil.Listen(t)
	closedAddr := closed.Addr().String()
	_ = closed.Close()
	register(t, cli, registry.Record{App: "order", ID: "order-gone", Addr: "127.0.0.1:1", Admin: closedAddr, Color: deploy.Blue})

	const timeout = 300 * time.Millisecond
	d := run(t, dashboard.Config{Client: cli, Channel: "trade", Timeout: timeout})

	// Every call to order is tallied by the instance that answered; only green fails.
	order, inventory := dial(t, cli, "order"), dial(t, cli, "inventory")
	var blueOK, greenOK, greenFailed int
	call := func() {
		r, err := order.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
		switch {
		case status.Code(err) == codes.Internal:
			greenFailed++
		case err != nil:
			t.Fatal(err)
		case r.GetInstance() == "order-blue":
			blueOK++
		default:
			greenOK++
		}
	}
	// Until both colors answer, then 400 calls more.
	testutil.Eventually(t, "both colors of order to answer", func() bool {
		call()
		return blueOK > 0 && greenOK > 0
	})
	for range 400 {
		call()
	}
	for range 10 {
		if _, err := inventory.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
	}
	// Three requests decided for green reach inventory's blue instance straight (as if a
	// middle hop had dropped the decision and picked blue): crossings.
	direct := testutil.Greeter(t, invBlue.Addr())
	decidedGreen := metadata.AppendToOutgoingContext(ctx, "baggage", deploy.BaggageKey+"="+url.PathEscape("trade=green"))
	for range 3 {
		if _, err := direct.SayHello(decidedGreen, &greeterpb.HelloRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	n := uint64(blueOK + greenOK + greenFailed)
	v := waitView(t, d, "all calls counted", func(v dashboard.View) bool {
		a := appOf(v, "order")
		b, g := colorOf(a, "blue"), colorOf(a, "green")
		inv := appOf(v, "inventory")
		return b.Requests+g.Requests == n && colorOf(inv, "blue").Requests+colorOf(inv, "green").Requests == 13
	})
	a := appOf(v, "order")
	blue, green := colorOf(a, "blue"), colorOf(a, "green")
	if blue.Requests != uint64(blueOK) || green.Requests != uint64(greenOK+greenFailed) {
		t.Errorf("requests: blue %d green %d; the client saw blue %d, green %d", blue.Requests, green.Requests, blueOK, greenOK+greenFailed)
	}
	if blue.Errors != 0 || green.Errors != uint64(greenFailed) || greenFailed == 0 {
		t.Errorf("errors: blue %d green %d; want 0 and the %d green failed", blue.Errors, green.Errors, greenFailed)
	}
	if want := 100 * float64(greenFailed) / float64(green.Requests); math.Abs(green.ErrorPercent-want) > 1e-9 {
		t.Errorf("green error %% %.2f, want %.2f", green.ErrorPercent, want)
	}
	if a.TargetBlue != 30 || *blue.TargetPercent != 30 || *green.TargetPercent != 70 {
		t.Errorf("target: app %v blue %v green %v; want 30/70", a.TargetBlue, *blue.TargetPercent, *green.TargetPercent)
	}
	if a.ObservedBlue == nil || math.Abs(*a.ObservedBlue-30) > 10 {
		t.Errorf("observed blue %v%%, want 30 %% ± 10", a.ObservedBlue)
	}
	if blue.RPS != float64(blue.Requests)/10 || blue.P50MS == nil || blue.P99MS == nil {
		t.Errorf("blue rate %v p50 %v p99 %v", blue.RPS, blue.P50MS, blue.P99MS)
	}
	if blue.States != (dashboard.States{Ready: 1, NoAnswer: 2}) || green.States != (dashboard.States{Ready: 1}) {
		t.Errorf("states: blue %+v green %+v", blue.States, green.States)
	}
	if s := instanceOf(a, "order-silent"); s.State != dashboard.StateNoAnswer || !strings.Contains(s.NoAnswer, "timed out after 300ms") {
		t.Errorf("the silent instance: %+v", s)
	}
	if s := instanceOf(a, "order-gone"); s.State != dashboard.StateNoAnswer || !strings.Contains(s.NoAnswer, "refused") {
		t.Errorf("the instance with a closed admin port: %+v", s)
	}
	if ob := instanceOf(a, "order-blue"); ob.State != dashboard.StateReady || ob.Version != "v-blue" || ob.LoadPercent == nil || *ob.LoadPercent != 100 {
		t.Errorf("order-blue: %+v", ob)
	}
	// Polling waits for no one: the silent instance costs one Timeout, in parallel.
	if v.PollMS > 3*timeout.Milliseconds() {
		t.Errorf("a poll took %d ms with one instance silent; want about %v", v.PollMS, timeout)
	}
	inv := appOf(v, "inventory")
	if colorOf(inv, "blue").Errors+colorOf(inv, "green").Errors != 0 {
		t.Errorf("inventory errors: %+v", inv.Colors)
	}
	if b, g := colorOf(inv, "blue"), colorOf(inv, "green"); b.CrossingsPS != 0.3 || g.CrossingsPS != 0 || instanceOf(inv, "inventory-blue").CrossingsPS != 0.3 {
		t.Errorf("crossings/s: blue %v green %v; want 0.3 (3 in 10 s) on blue", b.CrossingsPS, g.CrossingsPS)
	}
	if c := colorOf(a, "blue").CrossingsPS + colorOf(a, "green").CrossingsPS; c != 0 {
		t.Errorf("order crossings/s %v; its calls carried no decision", c)
	}
	if evs := v.Channels[0].Events; len(evs) < 2 || evs[0].Kind != "OnStart" || evs[len(evs)-1].Kind != "OnFlowChange" || evs[len(evs)-1].New != 30 {
		t.Errorf("events %+v; want OnStart … OnFlowChange 50→30", evs)
	}

	// Drain blue: its instances show as drained, the timeline gets the transition.
	if _, err := ctl.Shift(ctx, "trade", 0); err != nil {
		t.Fatal(err)
	}
	waitView(t, d, "blue drained", func(v dashboard.View) bool {
		b := colorOf(appOf(v, "inventory"), "blue")
		evs := v.Channels[0].Events
		return b.Drained && b.States.Drained == 1 && evs[len(evs)-1].Kind == "OnEnterAllGreen"
	})
}
