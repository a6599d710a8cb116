package lifecycle_test

import (
	"context"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/reach"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// ownRecorder answers every call and keeps the sticky.Own mark its handler saw last.
type ownRecorder struct {
	greeterpb.UnimplementedGreeterServer
	mu   sync.Mutex
	last *sticky.Own
}

func (g *ownRecorder) SayHello(ctx context.Context, _ *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	g.see(ctx)
	return &greeterpb.HelloReply{}, nil
}

func (g *ownRecorder) SayHellos(_ *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	g.see(st.Context())
	return st.Send(&greeterpb.HelloReply{})
}

func (g *ownRecorder) see(ctx context.Context) {
	g.mu.Lock()
	g.last = sticky.OwnOf(ctx)
	g.mu.Unlock()
}

func (g *ownRecorder) seen() *sticky.Own {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last
}

// openChannel opens channel with apps at percent blue and returns the controller.
func openChannel(t *testing.T, cli *clientv3.Client, channel string, percent float64, apps ...string) *traffic.Controller {
	t.Helper()
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(context.Background(), channel, apps); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(context.Background(), channel, percent); err != nil {
		t.Fatal(err)
	}
	return ctl
}

// rulesClient is a traffic rule client, closed at cleanup.
func rulesClient(t *testing.T, cli *clientv3.Client) *traffic.Rules {
	t.Helper()
	rules, err := traffic.NewRules(context.Background(), traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rules.Close)
	return rules
}

// Issue 12, case 2: the instance's server marks a request decided for its own color
// (sticky.Own), so that the balancer, on the calls the handler makes, fails rather than cross
// to the other color: new code never calls old code. Requests decided otherwise, for another
// channel, or not at all are not marked, nor is anything once the channel is finished.
func TestRequestDecidedForTheOwnColorIsMarked(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctl := openChannel(t, cli, "mark", 50, "greeter")
	rec := &ownRecorder{}
	inst, err := lifecycle.New(config(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color = deploy.Blue }))
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), rec)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	rules := rulesClient(t, cli)
	// Straight to the instance: the rule client's interceptor writes the context's decisions to
	// the baggage header (it decides nothing itself for a target that is not switchyard:///).
	c := testutil.Greeter(t, inst.Addr(), grpc.WithChainUnaryInterceptor(rules.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(rules.StreamClientInterceptor()))
	decided := func(decisions ...string) context.Context {
		ctx := context.Background()
		for k := 0; k < len(decisions); k += 2 {
			var err error
			if ctx, err = traffic.WithDecision(ctx, decisions[k], deploy.Color(decisions[k+1])); err != nil {
				t.Fatal(err)
			}
		}
		return ctx
	}
	unary := func(ctx context.Context) *sticky.Own {
		t.Helper()
		if _, err := c.SayHello(ctx, &greeterpb.HelloRequest{}); err != nil {
			t.Fatal(err)
		}
		return rec.seen()
	}
	stream := func(ctx context.Context) *sticky.Own {
		t.Helper()
		st, err := c.SayHellos(ctx, &greeterpb.HelloRequest{Count: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		return rec.seen()
	}
	if o := unary(decided("mark", "blue")); o == nil || *o != (sticky.Own{Channel: "mark", Color: "blue", Instance: "greeter/blue-1"}) {
		t.Fatalf("unary call decided mark=blue on a blue instance of channel mark: mark %+v, want {mark blue greeter/blue-1}", o)
	}
	if o := stream(decided("other", "green", "mark", "blue")); o == nil || *o != (sticky.Own{Channel: "mark", Color: "blue", Instance: "greeter/blue-1"}) {
		t.Fatalf("stream decided mark=blue on a blue instance: mark %+v, want {mark blue greeter/blue-1}", o)
	}
	for name, ctx := range map[string]context.Context{
		"decided green":           decided("mark", "green"),
		"decided for another one": decided("other", "blue"),
		"not decided":             context.Background(),
	} {
		if o := unary(ctx); o != nil {
			t.Errorf("unary call %s: marked %+v, want no mark", name, o)
		}
		if o := stream(ctx); o != nil {
			t.Errorf("stream %s: marked %+v, want no mark", name, o)
		}
	}
	// The channel finished: the instance is in no open channel, nothing is marked.
	if _, err := ctl.Finish(context.Background(), "mark"); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, cli, "blue-1", "", 100)
	if o := unary(decided("mark", "blue")); o != nil {
		t.Fatalf("after the channel finished, a call decided mark=blue is marked %+v; want no mark", o)
	}
}

// degradedOf is the Degraded of instance id of app in etcd, and whether it has a record.
func degradedOf(t *testing.T, cli *clientv3.Client, app, id string) (string, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), deploy.AppPrefix(deploy.DefaultPrefix, app)+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", false
	}
	in, err := registry.Unmarshal(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return in.Degraded, true
}

// waitDegraded waits until id's record says want (and Status agrees).
func waitDegraded(t *testing.T, cli *clientv3.Client, inst *lifecycle.Instance, app, id, want string) {
	t.Helper()
	testutil.Eventually(t, id+"'s record degraded "+want, func() bool {
		d, ok := degradedOf(t, cli, app, id)
		return ok && d == want && inst.Status().Degraded == want
	})
}

// Issue 12, case 2: an instance whose process cannot reach its own color of an app of its
// channel (as the balancer's connections publish it on the reach board) marks its record
// degraded, and clears the mark when its color serves again; a view of its own app does not
// count, nor does anything once the channel is finished. The board is fed by hand here; the
// chain test drives it through real connections.
func TestUnreachableOwnColorMarksTheRecordDegraded(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	const channel = "degrade" // the board is process-wide: a channel no other test uses
	ctl := openChannel(t, cli, channel, 50, "greeter", "inventory")
	blue, _ := start(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color = deploy.Blue })
	green, _ := start(t, cli, "green-1", func(c *lifecycle.Config) { c.Color = deploy.Green })
	blueW, _ := traffic.Weights(50)
	waitRecord(t, cli, "blue-1", channel, blueW)

	inventory, self, others := new(reach.Entry), new(reach.Entry), new(reach.Entry)
	defer inventory.Close()
	defer self.Close()
	defer others.Close()
	for _, e := range []*reach.Entry{inventory, self} { // connections blue-1's and green-1's own-color calls used
		e.Use("greeter/blue-1")
		e.Use("greeter/green-1")
	}
	// A connection only another instance of the process used does not count.
	others.Set(reach.View{App: "stock", Channel: channel, Serving: [2]bool{false, true}})
	// A connection of this process to its own app sees blue unserved (say, because blue-1 is
	// degraded): that must not mark blue-1, or it would never clear.
	self.Set(reach.View{App: "greeter", Channel: channel, Serving: [2]bool{false, true}})
	inventory.Set(reach.View{App: "inventory", Channel: channel, Serving: [2]bool{true, true}})
	if d, _ := degradedOf(t, cli, "greeter", "blue-1"); d != "" {
		t.Fatalf("blue-1 degraded %q while every app it calls serves blue", d)
	}
	inventory.Set(reach.View{App: "inventory", Channel: channel, Serving: [2]bool{false, true}})
	waitDegraded(t, cli, blue, "greeter", "blue-1", "no serving blue instance of inventory")
	if d, _ := degradedOf(t, cli, "greeter", "green-1"); d != "" || green.Status().Degraded != "" {
		t.Fatalf("green-1 degraded %q while green serves", d)
	}
	inventory.Set(reach.View{App: "inventory", Channel: channel, Serving: [2]bool{true, true}})
	waitDegraded(t, cli, blue, "greeter", "blue-1", "")

	// Green cannot be served: green-1 marks itself; then the channel finishes and it clears.
	inventory.Set(reach.View{App: "inventory", Channel: channel, Serving: [2]bool{true, false}})
	waitDegraded(t, cli, green, "greeter", "green-1", "no serving green instance of inventory")
	if _, err := ctl.Finish(context.Background(), channel); err != nil {
		t.Fatal(err)
	}
	waitDegraded(t, cli, green, "greeter", "green-1", "")
}
