package registry_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// caller calls SayHello in a closed loop (bounded in count and time) and counts answers per
// instance and failures.
type caller struct {
	mu       sync.Mutex
	byID     map[string]int
	failures []error
	started  int // calls begun
	ended    int // calls that returned
	stop     chan struct{}
	done     chan struct{}
}

// startCaller calls c in a loop until halted, counting answers by instance and keeping every
// failure. A consumer's channel leaves idle and takes its resolver's first state before the first
// call: a call made before the first list fails (by design) when that list runs out of time
// on a loaded machine, and the tests count failures from the first state on.
func startCaller(t testing.TB, c greeterpb.GreeterClient) *caller {
	if cs, ok := c.(*consumer); ok && cs.cc != nil {
		cs.cc.Connect()
		testutil.Eventually(t, "the resolver's first state", func() bool {
			cs.mu.Lock()
			defer cs.mu.Unlock()
			return cs.n > 0
		})
	}
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
			cl.mu.Lock()
			cl.started++
			cl.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{Name: "t"})
			cancel()
			cl.mu.Lock()
			cl.ended++
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
	return maps.Clone(cl.byID)
}

func (cl *caller) failed() []error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return slices.Clone(cl.failures)
}

// settled waits until every call begun before settled was called has returned, and returns
// the counts then: every call counted after them began after settled was called.
func (cl *caller) settled(t testing.TB) map[string]int {
	t.Helper()
	cl.mu.Lock()
	begun := cl.started
	cl.mu.Unlock()
	var base map[string]int
	testutil.Eventually(t, "the calls in flight to return", func() bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		base = maps.Clone(cl.byID)
		return cl.ended >= begun
	})
	return base
}

// waitCalls waits until every id has answered at least n more calls than in base.
func (cl *caller) waitCalls(t testing.TB, base map[string]int, n int, ids ...string) {
	t.Helper()
	testutil.Eventually(t, fmt.Sprintf("instances %v to answer %d calls each", ids, n), func() bool {
		cur := cl.counts()
		for _, id := range ids {
			if cur[id]-base[id] < n {
				return false
			}
		}
		return true
	})
}

func TestConsumerReachesEveryInstanceAndStopsReachingADeregisteredOne(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	var regs []*registry.Registrar
	for _, id := range []string{"g-1", "g-2", "g-3"} {
		addr, _ := testutil.ServeGreeter(t, id)
		regs = append(regs, register(t, cli, "greeter", id, addr))
	}
	c := dial(t, cli, "greeter")
	cl := startCaller(t, c)
	cl.waitCalls(t, nil, 20, "g-1", "g-2", "g-3")

	if err := regs[2].Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The consumer's own watch delivers the deregistration to gRPC; from the first call
	// begun after that, g-3 gets nothing.
	c.resolved(t, "g-1 and g-2 without g-3", hasIDs("g-1", "g-2"))
	base := cl.settled(t)
	cl.waitCalls(t, base, 50, "g-1", "g-2")
	if got := cl.counts()["g-3"] - base["g-3"]; got != 0 {
		t.Fatalf("g-3 answered %d calls after it was deregistered", got)
	}
	cl.stopAndRequireNoFailures(t)
}

func TestEtcdOutageLongerThanTheTTL(t *testing.T) {
	t.Parallel()
	// 2 s rather than shortTTL: the test goes on checking the recovered lease after it was
	// renewed, and a 1 s lease could lapse again on an oversubscribed CPU.
	const ttl = 2 * time.Second
	e := etcdtest.Start(t)
	cli, direct := e.Client(t), e.DirectClient(t)
	kaCli, renewed := keepAliveClient(t, e)
	logs := map[string]*stateLog{}
	var regs []*registry.Registrar
	for _, id := range []string{"g-1", "g-2"} {
		l := &stateLog{}
		logs[id] = l
		addr, _ := testutil.ServeGreeter(t, id)
		regs = append(regs, register(t, kaCli, "greeter", id, addr, func(c *registry.Config) {
			c.TTL = ttl
			c.OnStateChange = l.add
		}))
	}
	cl := startCaller(t, dial(t, cli, "greeter"))
	cl.waitCalls(t, nil, 20, "g-1", "g-2")

	// The outage begins with both registered (a short lease can lapse on a loaded machine),
	// and only the changes from here on count.
	waitRegistered(t, regs...)
	marks := map[string]int{}
	for id, l := range logs {
		marks[id] = l.mark()
	}
	e.Stop()
	stoppedAt := time.Now()
	// The outage lasts longer than the TTL as the registrars see it: etcd's client gives up a
	// keepalive once the TTL has passed without an answer (+0.1 s for the first answer with
	// keepAliveClient), and then each registrar reports its registration lost.
	for id, l := range logs {
		testutil.Eventually(t, id+"'s registrar to report its lease lost", func() bool {
			return l.sawAfter(marks[id], registry.StateLost)
		})
	}
	t.Logf("both registrars noticed the outage within %v", time.Since(stoppedAt))
	// Calls go on, to both instances, after both leases are lost.
	cl.waitCalls(t, cl.counts(), 20, "g-1", "g-2")

	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	for id, l := range logs {
		testutil.Eventually(t, id+" to be registered again after etcd came back", func() bool {
			return l.sawAfter(marks[id], registry.StateLost, registry.StateRegistered)
		})
	}
	reregistered := time.Now()
	t.Logf("both instances registered again %v after etcd restarted", reregistered.Sub(restarted))

	// And they stay registered: etcd renews the lease each key is on for a keepalive sent more
	// than the TTL after both were registered again, and then the keys are still there, on
	// those leases, and the registrars say registered. (The lease is read again until then: a
	// short lease can lapse on a loaded machine, and the Registrar registers again on a new one.)
	for _, r := range regs {
		var lease clientv3.LeaseID
		testutil.Eventually(t, r.Key()+" on a lease etcd renewed for a keepalive sent a TTL after the recovery", func() bool {
			resp, err := direct.Get(context.Background(), r.Key())
			if err != nil || len(resp.Kvs) != 1 {
				return false
			}
			lease = clientv3.LeaseID(resp.Kvs[0].Lease)
			return renewed.renewedSince(lease, reregistered.Add(ttl))
		})
		resp, err := direct.Get(context.Background(), r.Key())
		if err != nil || len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != lease {
			t.Fatalf("%s after its lease was renewed: %v (err %v); want it on lease %x", r.Key(), resp.Kvs, err, lease)
		}
		if !leaseAlive(t, direct, lease) {
			t.Fatalf("%s: lease not alive after recovery", r.Key())
		}
		if r.State() != registry.StateRegistered {
			t.Fatalf("%s: state %v", r.Key(), r.State())
		}
	}
	cl.waitCalls(t, cl.counts(), 20, "g-1", "g-2")
	cl.stopAndRequireNoFailures(t)
	t.Logf("calls per instance: %v", cl.counts())
}

func TestMalformedRecordDoesNotStopRouting(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	for _, id := range []string{"g-1", "g-2"} {
		addr, _ := testutil.ServeGreeter(t, id)
		register(t, cli, "greeter", id, addr)
	}
	if _, err := cli.Put(context.Background(), "/switchyard/services/greeter/g-3", `{"v":1,"app":"greeter"`); err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	cl := startCaller(t, dial(t, cli, "greeter", func(c *registry.ResolverConfig) { c.MeterProvider = mp }))
	cl.waitCalls(t, nil, 20, "g-1", "g-2")
	if _, err := cli.Put(context.Background(), "/switchyard/services/greeter/g-1", `garbage`); err != nil {
		t.Fatal(err)
	}
	// The consumer's watch has skipped g-3's record and now g-1's; g-1's last good record
	// stays, and calls go on reaching it.
	testutil.Eventually(t, "the consumer's resolver to skip g-1's garbage", func() bool {
		return skippedMetric(t, reader, "greeter") == 2
	})
	cl.waitCalls(t, cl.settled(t), 20, "g-1", "g-2")
	cl.stopAndRequireNoFailures(t)
}

func TestResolverReportsErrorWhenEtcdIsUnreachable(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	c := dial(t, cli, "greeter", func(c *registry.ResolverConfig) { c.RequestTimeout = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	_, err := c.SayHello(ctx, &greeterpb.HelloRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "registry: no instances known yet") {
		t.Fatalf("RPC without etcd = %v, want Unavailable naming the registry", err)
	}

	// It recovers by itself once etcd is back.
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	addr, _ := testutil.ServeGreeter(t, "g-1")
	register(t, e.DirectClient(t), "greeter", "g-1", addr)
	resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
	if err != nil || resp.GetInstance() != "g-1" {
		t.Fatalf("after etcd came back: %v %v", resp, err)
	}
}

func TestResolverRefusesABadTarget(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	c := dial(t, e.Client(t), "bad/app")
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
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
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ln := &countingListener{Listener: testutil.Listen(t)}
	addr, _ := testutil.ServeGreeterOn(t, ln, "g-1")

	r := register(t, cli, "greeter", "g-1", addr)
	c := dial(t, cli, "greeter")
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	var first peer.Peer
	if _, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true), grpc.Peer(&first)); err != nil {
		t.Fatal(err)
	}
	for _, w := range []float64{50, 10, 200} {
		if err := r.Update(ctx, func(in *registry.Record) { in.Weight = w }); err != nil {
			t.Fatal(err)
		}
		// gRPC has taken the new weight: its balancer has processed the state.
		c.resolved(t, fmt.Sprint("weight ", w), func(in []registry.Record) bool {
			return len(in) == 1 && in[0].Weight == w
		})
	}
	for i := 0; i < 10; i++ {
		var p peer.Peer
		if _, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.Peer(&p)); err != nil {
			t.Fatal(err)
		}
		if p.LocalAddr.String() != first.LocalAddr.String() {
			t.Fatalf("call %d after the weight changes went over a new connection (%v, first %v)", i, p.LocalAddr, first.LocalAddr)
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
	b, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
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

func TestEndpointsCarryTheAddressAndEndpointInfo(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	register(t, cli, "greeter", "g-1", "127.0.0.1:7001", func(c *registry.Config) {
		c.Instance.Color, c.Instance.Weight = deploy.Green, 30
	})
	cc := newStubCC()
	buildResolver(t, cli, "greeter", cc)
	st := testutil.Receive(t, "a state from the resolver", cc.states)
	if len(st.Endpoints) != 1 || st.Endpoints[0].Addresses[0].Addr != "127.0.0.1:7001" {
		t.Fatalf("endpoints %+v", st.Endpoints)
	}
	in, ok := balancer.EndpointInfoFrom(st.Endpoints[0])
	if !ok || in.ID != "g-1" || in.Color != deploy.Green || in.Weight != 30 || in.Epoch == 0 {
		t.Fatalf("EndpointInfoFrom = %+v, %v", in, ok)
	}
	if st.ServiceConfig == nil {
		t.Fatal("state carries no service config")
	}
}
