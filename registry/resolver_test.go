package registry_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// caller calls SayHello in a closed loop (bounded in count and time) and counts answers per
// instance and failures.
type caller struct {
	mu       sync.Mutex
	byID     map[string]int
	failures []error
	stop     chan struct{}
	done     chan struct{}
}

func startCaller(t testing.TB, c greeterpb.GreeterClient) *caller {
	cl := &caller{byID: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(cl.done)
		deadline := time.Now().Add(time.Minute)
		for i := 0; i < 200_000 && time.Now().Before(deadline); i++ {
			select {
			case <-cl.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{Name: "t"})
			cancel()
			cl.mu.Lock()
			if err != nil {
				cl.failures = append(cl.failures, err)
			} else {
				cl.byID[resp.GetInstance()]++
			}
			cl.mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(cl.halt)
	return cl
}

func (cl *caller) halt() {
	select {
	case <-cl.stop:
	default:
		close(cl.stop)
	}
	<-cl.done
}

// stopAndRequireNoFailures stops the loop and fails t if any call failed.
func (cl *caller) stopAndRequireNoFailures(t testing.TB) {
	t.Helper()
	cl.halt()
	if f := cl.failed(); len(f) != 0 {
		t.Fatalf("%d of the calls failed, first: %v", len(f), f[0])
	}
}

func (cl *caller) counts() map[string]int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := make(map[string]int, len(cl.byID))
	for k, v := range cl.byID {
		out[k] = v
	}
	return out
}

func (cl *caller) failed() []error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]error(nil), cl.failures...)
}

// waitCalls waits until every id has answered at least n more calls than in base.
func (cl *caller) waitCalls(t testing.TB, timeout time.Duration, base map[string]int, n int, ids ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		cur, ok := cl.counts(), true
		for _, id := range ids {
			ok = ok && cur[id]-base[id] >= n
		}
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("instances %v did not each answer %d calls within %v: base %v now %v (failures: %d)",
		ids, n, timeout, base, cl.counts(), len(cl.failed()))
}

func TestConsumerReachesEveryInstanceAndStopsReachingADeregisteredOne(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	var regs []*registry.Registrar
	for _, id := range []string{"g-1", "g-2", "g-3"} {
		regs = append(regs, register(t, cli, "greeter", id, startGreeter(t, id)))
	}
	cl := startCaller(t, dial(t, cli, "greeter"))
	cl.waitCalls(t, 10*time.Second, nil, 20, "g-1", "g-2", "g-3")

	rec := watch(t, cli, "greeter")
	if err := regs[2].Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, 2*time.Second, "g-3 gone", hasIDs("g-1", "g-2"))
	time.Sleep(200 * time.Millisecond) // the consumer's own watch delivers the same event
	base := cl.counts()
	cl.waitCalls(t, 10*time.Second, base, 50, "g-1", "g-2")
	if got := cl.counts()["g-3"] - base["g-3"]; got != 0 {
		t.Fatalf("g-3 answered %d calls after it was deregistered", got)
	}
	cl.stopAndRequireNoFailures(t)
}

func TestEtcdOutageLongerThanTheTTL(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	logs := map[string]*stateLog{}
	var regs []*registry.Registrar
	for _, id := range []string{"g-1", "g-2"} {
		l := &stateLog{}
		logs[id] = l
		regs = append(regs, register(t, cli, "greeter", id, startGreeter(t, id), func(c *registry.Config) {
			c.OnStateChange = l.add
		}))
	}
	cl := startCaller(t, dial(t, cli, "greeter"))
	cl.waitCalls(t, 10*time.Second, nil, 20, "g-1", "g-2")

	e.Stop()
	stoppedAt, stopped := time.Now(), cl.counts()
	// etcd's client gives up on a keepalive after the TTL (1s), or DialTimeout+1s (3s) if no
	// keepalive was answered yet, checking once a second.
	for id, l := range logs {
		for !l.saw(registry.StateRegistered, registry.StateLost) {
			if time.Since(stoppedAt) > 6*time.Second {
				t.Fatalf("%s: registrar did not notice the lost lease within 6s: %v", id, l)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("both registrars noticed the outage within %v", time.Since(stoppedAt))
	if d := 2500*time.Millisecond - time.Since(stoppedAt); d > 0 {
		time.Sleep(d) // the outage lasts well past the TTL
	}
	// Calls went on during the outage, to both instances.
	cl.waitCalls(t, time.Second, stopped, 20, "g-1", "g-2")

	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	for id, l := range logs {
		for !l.saw(registry.StateRegistered, registry.StateLost, registry.StateRegistered) {
			if time.Since(restarted) > 15*time.Second {
				t.Fatalf("%s: not registered again 15s after etcd came back: %v", id, l)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("both instances registered again %v after etcd restarted", time.Since(restarted))

	// And they stay registered: wait past the TTL, then both keys are in etcd on live leases.
	time.Sleep(2500 * time.Millisecond)
	for _, r := range regs {
		resp, err := cli.Get(context.Background(), r.Key())
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s missing after recovery (err %v)", r.Key(), err)
		}
		// TTL is whole seconds remaining, rounded down: 0 is alive, -1 is gone.
		ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease))
		if err != nil || ttl.TTL < 0 {
			t.Fatalf("%s: lease not alive after recovery: %+v %v", r.Key(), ttl, err)
		}
		if r.State() != registry.StateRegistered {
			t.Fatalf("%s: state %v", r.Key(), r.State())
		}
	}
	after := cl.counts()
	cl.waitCalls(t, 5*time.Second, after, 20, "g-1", "g-2")
	cl.stopAndRequireNoFailures(t)
	t.Logf("calls per instance: %v", cl.counts())
}

func TestMalformedRecordDoesNotStopRouting(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	register(t, cli, "greeter", "g-1", startGreeter(t, "g-1"))
	register(t, cli, "greeter", "g-2", startGreeter(t, "g-2"))
	if _, err := cli.Put(context.Background(), "/switchyard/services/greeter/g-3", `{"v":1,"app":"greeter"`); err != nil {
		t.Fatal(err)
	}
	cl := startCaller(t, dial(t, cli, "greeter"))
	cl.waitCalls(t, 10*time.Second, nil, 50, "g-1", "g-2")
	if _, err := cli.Put(context.Background(), "/switchyard/services/greeter/g-1", `garbage`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	cl.waitCalls(t, 10*time.Second, cl.counts(), 50, "g-1", "g-2") // g-1's last good record stays
	cl.stopAndRequireNoFailures(t)
}

func TestResolverReportsErrorWhenEtcdIsUnreachable(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	c := dial(t, cli, "greeter")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.SayHello(ctx, &greeterpb.HelloRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "registry: no instances known yet") {
		t.Fatalf("RPC without etcd = %v, want Unavailable naming the registry", err)
	}

	// It recovers by itself once etcd is back.
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	register(t, e.DirectClient(t), "greeter", "g-1", startGreeter(t, "g-1"))
	ctx, cancel = context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
	if err != nil || resp.GetInstance() != "g-1" {
		t.Fatalf("after etcd came back: %v %v", resp, err)
	}
}

func TestResolverRefusesABadTarget(t *testing.T) {
	e := etcdtest.Start(t)
	c := dial(t, e.Client(t), "bad/app")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.SayHello(ctx, &greeterpb.HelloRequest{})
	if err == nil || !strings.Contains(err.Error(), "want switchyard:///<app>") {
		t.Fatalf("RPC on switchyard:///bad/app = %v, want an error explaining the target form", err)
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func TestWeightChangeReusesTheConnection(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: raw}
	s := grpc.NewServer()
	greeterpb.RegisterGreeterServer(s, &greeterpb.Server{Instance: "g-1"})
	go func() { _ = s.Serve(ln) }()
	defer s.Stop()

	r := register(t, cli, "greeter", "g-1", raw.Addr().String())
	c := dial(t, cli, "greeter")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	rec := watch(t, cli, "greeter")
	for _, w := range []float64{50, 10, 200} {
		if err := r.Update(ctx, func(in *registry.Instance) { in.Weight = w }); err != nil {
			t.Fatal(err)
		}
		rec.waitFor(t, 2*time.Second, fmt.Sprint("weight ", w), func(in []registry.Instance) bool {
			return len(in) == 1 && in[0].Weight == w
		})
	}
	time.Sleep(200 * time.Millisecond)
	for i := 0; i < 10; i++ {
		if _, err := c.SayHello(ctx, &greeterpb.HelloRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := ln.n.Load(); n != 1 {
		t.Fatalf("server accepted %d connections; weight changes must not reconnect", n)
	}
}

// stubCC is the gRPC side of a resolver, for tests and benchmarks that look at what the
// resolver sends rather than at RPCs. It records states and errors.
type stubCC struct {
	states chan resolver.State
	errs   chan error
}

func newStubCC() *stubCC {
	return &stubCC{states: make(chan resolver.State, 16), errs: make(chan error, 16)}
}

func (c *stubCC) UpdateState(s resolver.State) error { c.states <- s; return nil }
func (c *stubCC) ReportError(err error)              { c.errs <- err }
func (c *stubCC) NewAddress([]resolver.Address)      {}
func (c *stubCC) ParseServiceConfig(string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{}
}

func buildResolver(t testing.TB, cli *clientv3.Client, app string, cc resolver.ClientConn) resolver.Resolver {
	t.Helper()
	b, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Build(resolver.Target{URL: *mustParse(t, "switchyard:///"+app)}, cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func TestEndpointsCarryTheInstanceRecord(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	register(t, cli, "greeter", "g-1", "127.0.0.1:7001", func(c *registry.Config) {
		c.Instance.Color, c.Instance.Weight = registry.ColorGreen, 30
	})
	cc := newStubCC()
	buildResolver(t, cli, "greeter", cc)
	var st resolver.State
	select {
	case st = <-cc.states:
	case <-time.After(5 * time.Second):
		t.Fatal("no state from the resolver")
	}
	if len(st.Endpoints) != 1 || st.Endpoints[0].Addresses[0].Addr != "127.0.0.1:7001" {
		t.Fatalf("endpoints %+v", st.Endpoints)
	}
	in, ok := registry.InstanceFromEndpoint(st.Endpoints[0])
	if !ok || in.ID != "g-1" || in.Color != registry.ColorGreen || in.Weight != 30 {
		t.Fatalf("InstanceFromEndpoint = %+v, %v", in, ok)
	}
	if st.ServiceConfig == nil {
		t.Fatal("state carries no service config")
	}
	if _, ok := registry.InstanceFromEndpoint(resolver.Endpoint{}); ok {
		t.Fatal("InstanceFromEndpoint found a record on a foreign endpoint")
	}
}
