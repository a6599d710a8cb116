package registry_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// fakeRules is a registry.Rules whose traffic a test sets app by app.
type fakeRules struct {
	mu      sync.Mutex
	traffic map[string]appTraffic
	next    chan struct{}
}

type appTraffic struct {
	channel     string
	blue, green float64
}

func newFakeRules() *fakeRules {
	return &fakeRules{traffic: map[string]appTraffic{}, next: make(chan struct{})}
}

func (f *fakeRules) Traffic(app string) (string, float64, float64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.traffic[app]
	return t.channel, t.blue, t.green, ok
}

func (f *fakeRules) Updated() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.next
}

// set changes app's traffic (no open channel when t is nil) and signals the change.
func (f *fakeRules) set(app string, t *appTraffic) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t == nil {
		delete(f.traffic, app)
	} else {
		f.traffic[app] = *t
	}
	close(f.next)
	f.next = make(chan struct{})
}

// infos are the balancer infos of the last state gRPC took, by instance id.
func (c *consumer) infos() map[string]balancer.EndpointInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]balancer.EndpointInfo{}
	for _, ep := range c.state.Endpoints {
		if info, ok := balancer.EndpointInfoFrom(ep); ok {
			out[info.ID] = info
		}
	}
	return out
}

// states is how many resolver states gRPC has taken.
func (c *consumer) states() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// split reports whether infos give every instance of ids channel ch and the traffic weight
// of its color: blue for b-*, green for g-*, 100 for the colorless n-*.
func split(infos map[string]balancer.EndpointInfo, ch string, blue, green float64) bool {
	want := map[string]float64{"b-1": blue, "g-1": green, "n-1": 100}
	if len(infos) != len(want) {
		return false
	}
	for id, w := range want {
		if info, ok := infos[id]; !ok || info.Channel != ch || info.TrafficWeight != w {
			return false
		}
	}
	return true
}

// TestRulesReachTheResolverBeforeAnyReput: with ResolverConfig.Rules, a shift reaches the
// consumer's balancer in one resolver state, while the instances (registered by plain
// Registrars that never re-put) still have no channel in their records.
func TestRulesReachTheResolverBeforeAnyReput(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	for id, color := range map[string]deploy.Color{"b-1": deploy.Blue, "g-1": deploy.Green, "n-1": deploy.None} {
		addr, _ := testutil.ServeGreeter(t, id)
		register(t, cli, "greeter", id, addr, func(c *registry.Config) { c.Instance.Color = color })
	}
	rules := newFakeRules()
	rules.set("greeter", &appTraffic{channel: "trade", blue: 100, green: 100})
	c := dial(t, cli, "greeter", func(rc *registry.ResolverConfig) { rc.Rules = rules })
	if _, err := c.SayHello(context.Background(), &greeterpb.HelloRequest{Name: "t"}); err != nil { // leaves idle
		t.Fatal(err)
	}
	testutil.Eventually(t, "the consumer to see the open channel at 50 %", func() bool {
		return split(c.infos(), "trade", 100, 100)
	})

	// Shift to 0 % blue: blue's weight 0.
	before := c.states()
	rules.set("greeter", &appTraffic{channel: "trade", blue: 0, green: 100})
	testutil.Eventually(t, "the consumer to take the shift to 0 % blue", func() bool {
		return split(c.infos(), "trade", 0, 100)
	})
	if n := c.states() - before; n != 1 {
		t.Fatalf("the shift took %d resolver states, want 1", n)
	}
	for i := 0; i < 20; i++ {
		resp, err := c.SayHello(context.Background(), &greeterpb.HelloRequest{Name: "t"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetInstance() == "b-1" {
			t.Fatalf("call %d reached the drained blue instance", i)
		}
	}
	// The records in etcd still say no channel (nothing was re-put); the endpoints' records
	// say what the rule says.
	resp, err := cli.Get(context.Background(), deploy.AppPrefix(deploy.DefaultPrefix, "greeter"), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if in, err := registry.Unmarshal(kv.Value); err != nil || in.Channel != "" {
			t.Fatalf("record %s: %+v, %v; want one in no channel", kv.Key, in, err)
		}
	}
	for _, in := range c.instances() {
		if in.Channel != "trade" || in.Color == deploy.Blue && in.TrafficWeight != 0 {
			t.Fatalf("the endpoint gives %+v, want channel trade and blue's weight 0", in)
		}
	}

	// A rule change of another app is no change for this one.
	before = c.states()
	rules.set("other", &appTraffic{channel: "other", blue: 100, green: 100})
	// Closing the channel: no channel, traffic weight 100 for everyone.
	rules.set("greeter", nil)
	testutil.Eventually(t, "the consumer to take the closed channel", func() bool {
		return split(c.infos(), "", 100, 100)
	})
	if n := c.states() - before; n != 1 {
		t.Fatalf("another app's rule and the close took %d resolver states, want 1", n)
	}
}

// TestShiftReachesTheResolverBeforeAnyReput is TestRulesReachTheResolverBeforeAnyReput with
// the real rule client: traffic's Controller opens, shifts and finishes a channel, and a
// consumer whose resolver has the traffic.Rules as Rules takes each step in one state, while
// the plain Registrars never re-put.
func TestShiftReachesTheResolverBeforeAnyReput(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	for id, color := range map[string]deploy.Color{"b-1": deploy.Blue, "g-1": deploy.Green, "n-1": deploy.None} {
		addr, _ := testutil.ServeGreeter(t, id)
		register(t, cli, "greeter", id, addr, func(c *registry.Config) { c.Instance.Color = color })
	}
	rules, err := traffic.NewRules(context.Background(), traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rules.Close)
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, cli, "greeter", func(rc *registry.ResolverConfig) { rc.Rules = rules })
	if _, err := c.SayHello(context.Background(), &greeterpb.HelloRequest{Name: "t"}); err != nil { // leaves idle
		t.Fatal(err)
	}
	testutil.Eventually(t, "the consumer to see no channel", func() bool { return split(c.infos(), "", 100, 100) })

	step := func(what string, do func() error, ch string, blue, green float64) {
		t.Helper()
		before := c.states()
		if err := do(); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, "the consumer to take "+what, func() bool { return split(c.infos(), ch, blue, green) })
		if n := c.states() - before; n != 1 {
			t.Fatalf("%s took %d resolver states, want 1", what, n)
		}
	}
	step("the open", func() error { _, err := ctl.Open(context.Background(), "trade", []string{"greeter"}); return err }, "trade", 100, 100)
	step("the shift to 0 % blue", func() error { _, err := ctl.Shift(context.Background(), "trade", 0); return err }, "trade", 0, 100)
	step("the shift to 20 % blue", func() error { _, err := ctl.Shift(context.Background(), "trade", 20); return err }, "trade", 25, 100)
	step("the finish", func() error { _, err := ctl.Finish(context.Background(), "trade"); return err }, "", 100, 100)
}

// countingRules counts the calls of Traffic: the resolver asks it at every update it works
// through (and once at Build and once when it starts following the rules).
type countingRules struct {
	*fakeRules
	calls atomic.Int64
}

func (c *countingRules) Traffic(app string) (string, float64, float64, bool) {
	c.calls.Add(1)
	return c.fakeRules.Traffic(app)
}

// TestReputOfTheRulesOwnSplitCostsTheResolverNothing: with Rules, instances re-putting the
// channel and traffic weight the rule already gave (what every instance does after a shift)
// are not an update of the resolver at all: it does not walk its endpoints or ask the rules
// for them, only a later real change (a weight) is one update.
func TestReputOfTheRulesOwnSplitCostsTheResolverNothing(t *testing.T) {
	defer registry.SetResolverCoalesce(0)()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	const n = 20
	put := func(i int, in registry.Record) {
		t.Helper()
		val, err := registry.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(context.Background(), deploy.InstanceKey(deploy.DefaultPrefix, in.App, in.ID), string(val)); err != nil {
			t.Fatal(err)
		}
	}
	record := func(i int) registry.Record {
		return registry.Record{App: "greeter", ID: fmt.Sprintf("b-%02d", i), Addr: fmt.Sprintf("127.0.0.1:%d", 7000+i),
			Color: deploy.Blue, Weight: 100, TrafficWeight: 100}
	}
	for i := range n {
		put(i, record(i))
	}
	rules := &countingRules{fakeRules: newFakeRules()}
	rules.set("greeter", &appTraffic{channel: "trade", blue: 25, green: 100})
	cc := newStubCC()
	b, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t), Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Build(resolver.Target{URL: *mustParse(t, "switchyard:///greeter")}, cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st := testutil.Receive(t, "the first state", cc.states)
	if info, _ := balancer.EndpointInfoFrom(st.Endpoints[0]); len(st.Endpoints) != n || info.Channel != "trade" || info.TrafficWeight != 25 {
		t.Fatalf("first state: %d endpoints, the first %+v; want %d in channel trade with weight 25", len(st.Endpoints), info, n)
	}
	// Build, the rules follower's start, the first update.
	testutil.Eventually(t, "the resolver to ask the rules three times", func() bool { return rules.calls.Load() == 3 })
	base := rules.calls.Load()
	for i := range n { // one watch response each
		in := record(i)
		in.Channel, in.TrafficWeight = "trade", 25
		put(i, in)
	}
	marker := record(0)
	marker.Channel, marker.TrafficWeight, marker.Weight = "trade", 25, 50
	put(0, marker)
	st = testutil.Receive(t, "the state with the marker", cc.states)
	if info, _ := balancer.EndpointInfoFrom(st.Endpoints[0]); info.Weight != 50 {
		t.Fatalf("the next state carries %+v, want b-00 with weight 50 (the re-puts sent a state)", info)
	}
	if got := rules.calls.Load() - base; got != 1 {
		t.Fatalf("the resolver worked through %d updates for %d re-puts of the rule's own split and one weight change; want 1", got, n)
	}
}
