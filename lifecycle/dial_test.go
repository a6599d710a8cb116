package lifecycle_test

import (
	"context"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/traffic"
)

// startDialer builds an instance of app serving a hop that calls next, dials next through the
// instance before Start (as a main does), starts it and returns it with the connection.
func startDialer(t *testing.T, cli *clientv3.Client, app, id string, color deploy.Color, next string) (*lifecycle.Instance, *grpc.ClientConn) {
	t.Helper()
	inst, err := lifecycle.New(config(t, cli, id, func(c *lifecycle.Config) { c.App, c.Color = app, color }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	h := &hop{id: id, color: string(color)}
	var cc *grpc.ClientConn
	if next != "" {
		if cc, err = inst.Dial(next); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		h.next = greeterpb.NewGreeterClient(cc)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), h)
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return inst, cc
}

// A service calling another through Instance.Dial keeps the request's sticky decision: a
// request decided blue at the entry reaches blue downstream, green reaches green; and a shift
// reaches the connection in one step: once the instance's rule client has it, the very next
// calls are decided and routed by it.
func TestDialKeepsDecisionsAndFollowsAShiftAtOnce(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(ctx, "trade", []string{"entry", "down"}); err != nil { // 50 % blue
		t.Fatal(err)
	}
	for _, c := range []deploy.Color{deploy.Blue, deploy.Green} {
		startDialer(t, cli, "down", "down-"+string(c), c, "")
	}
	startDialer(t, cli, "entry", "entry-blue", deploy.Blue, "down")
	green, greenToDown := startDialer(t, cli, "entry", "entry-green", deploy.Green, "down")
	_, toEntry := startDialer(t, cli, "gw", "gw", deploy.None, "entry") // the gateway decides
	entry := greeterpb.NewGreeterClient(toEntry)

	seen := map[string]int{}
	for range 40 {
		path, err := call(entry, true)
		if err != nil {
			t.Fatal(err)
		}
		at, down, _ := strings.Cut(path, ">")
		if strings.TrimPrefix(at, "entry-") != strings.TrimPrefix(down, "down-") {
			t.Fatalf("a request reached %s: the decision made for it was not kept downstream", path)
		}
		seen[path]++
	}
	t.Logf("paths at 50 %% blue: %v", seen)
	if seen["entry-blue>down-blue"] == 0 || seen["entry-green>down-green"] == 0 {
		t.Fatalf("paths at 50 %% blue: %v; want both colors", seen)
	}

	// Calls made by entry-green's code with no decision (a background task, say) follow the
	// rule the instance has: after a shift, at once.
	down := greeterpb.NewGreeterClient(greenToDown)
	for _, step := range []struct {
		percent float64
		drained deploy.Drain
		want    string
	}{{0, deploy.Drain{Blue: true}, "down-green"}, {100, deploy.Drain{Green: true}, "down-blue"}} {
		if _, err := ctl.Shift(ctx, "trade", step.percent); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, "entry-green's rules to have the shift", func() bool {
			d, _ := green.Drained()
			return d == step.drained
		})
		for range 20 {
			got, err := call(down, false)
			if err != nil {
				t.Fatal(err)
			}
			if got != step.want {
				t.Fatalf("a call right after the instance's rules had blue at %v %% reached %s, want %s", step.percent, got, step.want)
			}
		}
	}
}

// A connection made before Start waits for the rules: a call made through it before Start
// succeeds once the instance has started.
func TestDialBeforeStartWaitsForTheRules(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	start(t, cli, "greeter-1")
	caller, err := lifecycle.New(config(t, cli, "caller", func(c *lifecycle.Config) { c.App = "caller" }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caller.Offline(context.Background()) })
	cc, err := caller.Dial("greeter")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	done := make(chan error, 1)
	go func() {
		_, err := call(greeterpb.NewGreeterClient(cc), false)
		done <- err
	}()
	if err := caller.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Receive(t, "the call made before Start", done); err != nil {
		t.Fatalf("a call made before Start: %v; want it to wait for the rules and succeed", err)
	}
}

// A connection of an instance that stops without ever loading the rules fails its calls with
// FailedPrecondition, those waiting and those made later; a bad app name is refused at Dial.
func TestDialOfAnInstanceThatNeverStartedFails(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	inst, err := lifecycle.New(config(t, cli, "caller"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Dial("Not An App"); err == nil || !strings.HasPrefix(err.Error(), "lifecycle: Dial: ") {
		t.Fatalf("Dial of a bad app name: %v; want a lifecycle error", err)
	}
	cc, err := inst.Dial("greeter")
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := greeterpb.NewGreeterClient(cc)
	done := make(chan error, 1)
	go func() { _, err := call(c, true); done <- err }()
	if err := inst.Offline(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{testutil.Receive(t, "the waiting call to fail", done), func() error { _, err := call(c, true); return err }()} {
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "lifecycle: the instance stopped before Start loaded the traffic rules") {
			t.Fatalf("a call through the Dial of an instance that never started: %v; want FailedPrecondition saying why", err)
		}
	}
}
