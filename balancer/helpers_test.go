package balancer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Picks follow a Weyl sequence (picker.go), so any F(m) consecutive picks from one picker, a
// Fibonacci number of them, give every endpoint F(m) × its weight share ±2 (proved and
// checked in TestFibonacciWindows), wherever the picker's counter stands. Each call on a READY
// connection makes one pick, so the same holds for F(m) calls while the picker stays.
const (
	fibRPCs  = 377    // F(14): calls per RPC-level check, ±2 calls
	fibPicks = 10_946 // F(21): picks per picker-level check, ±2 picks (0.018 pp)
)

// checkShare fails t unless got of n Fibonacci-window picks (or calls) is within ±2 of
// n·share (see fibRPCs).
func checkShare(t testing.TB, what string, got, n int, share float64) {
	t.Helper()
	if want := float64(n) * share; math.Abs(float64(got)-want) >= 2 {
		t.Errorf("%s: %d of %d, want %.2f ±2 (share %.4f)", what, got, n, want, share)
	}
}

// instance is one greeter server registered in etcd.
type instance struct {
	id       string
	reg      *registry.Registrar
	srv      *grpc.Server
	accepted atomic.Int32 // TCP connections accepted
	offline  atomic.Bool  // answer with the offline flag
	delay    atomic.Int64 // handler delay in ns
	hold     atomic.Bool  // hold calls until the server stops (cuts them)
	inflight atomic.Int32 // calls in the handler now
	served   atomic.Int64 // calls that reached the handler
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

type cluster struct {
	t    testing.TB
	cli  *clientv3.Client
	mu   sync.Mutex
	byID map[string]*instance
}

func newCluster(t testing.TB) *cluster {
	return &cluster{t: t, cli: etcdtest.Start(t).Client(t), byID: map[string]*instance{}}
}

// start serves a greeter and registers it as in.
func (c *cluster) start(in registry.Record) *instance {
	t := c.t
	t.Helper()
	inst := &instance{id: in.ID}
	ln := testutil.Listen(t)
	var srv *grpc.Server
	in.Addr, srv = testutil.ServeGreeterOn(t, countingListener{ln, &inst.accepted}, in.ID,
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			inst.served.Add(1)
			inst.inflight.Add(1)
			defer inst.inflight.Add(-1)
			if inst.offline.Load() {
				_ = grpc.SetTrailer(ctx, metadata.Pairs(deploy.OfflineHeader, "1"))
			}
			if d := inst.delay.Load(); d > 0 {
				time.Sleep(time.Duration(d))
			}
			if inst.hold.Load() {
				<-ctx.Done() // the server's Stop cancels it
			}
			return h(ctx, req)
		}))
	inst.srv = srv
	in.App = "greeter"
	inst.reg = c.register(in)
	c.mu.Lock()
	c.byID[in.ID] = inst
	c.mu.Unlock()
	return inst
}

// register registers in (App and Addr set) until the test ends.
func (c *cluster) register(in registry.Record) *registry.Registrar {
	t := c.t
	t.Helper()
	r, err := registry.NewRegistrar(registry.Config{Client: c.cli, Instance: in, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	if err := r.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// dialWith returns a plain client of switchyard:///greeter through the resolver, configured
// by mod: the service config is the resolver's (switchyard_weighted by default).
func (c *cluster) dialWith(mod ...func(*registry.ResolverConfig)) greeterpb.GreeterClient {
	c.t.Helper()
	return greeterpb.NewGreeterClient(c.conn(mod...))
}

// conn is dialWith's connection, already leaving idle (resolving and connecting).
func (c *cluster) conn(mod ...func(*registry.ResolverConfig)) *grpc.ClientConn {
	t := c.t
	t.Helper()
	cfg := registry.ResolverConfig{Client: c.cli, Logger: testutil.Logger(t)}
	for _, m := range mod {
		m(&cfg)
	}
	rb, err := registry.NewResolverBuilder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc := testutil.Dial(t, "switchyard:///greeter", grpc.WithResolvers(rb))
	cc.Connect()
	return cc
}

// client is a client of switchyard:///greeter whose switchyard_weighted balancer is
// observed: the test sees every picker it sends, the resolver states it applied, and moves
// its clock.
type client struct {
	greeterpb.GreeterClient
	t     testing.TB
	obs   *observer
	clock *clockwork.FakeClock // the balancer's clock; nil: the real one
}

// dial returns an observed client of switchyard:///greeter with the real clock.
func (c *cluster) dial() *client { return c.dialClock(nil) }

// dialClock returns an observed client whose balancer runs on clock (nil: the real clock).
func (c *cluster) dialClock(clock *clockwork.FakeClock) *client {
	t := c.t
	t.Helper()
	o, sc := newObserver(t, clock)
	return &client{GreeterClient: greeterpb.NewGreeterClient(c.conn(func(rc *registry.ResolverConfig) { rc.ServiceConfig = sc })),
		t: t, obs: o, clock: clock}
}

// newObserver returns an observer whose balancer runs on clock (nil: the real clock), and
// the service config that selects it; it is forgotten when the test ends.
func newObserver(t testing.TB, clock *clockwork.FakeClock) (*observer, string) {
	o := &observer{log: testutil.Logger(t), addrOf: map[gbalancer.SubConn]string{}, idOf: map[string]string{},
		scState: map[gbalancer.SubConn]connectivity.State{}}
	o.clock = clockwork.NewRealClock()
	if clock != nil {
		o.clock = clock
	}
	id := observers.add(o)
	t.Cleanup(func() { observers.Delete(id) })
	return o, fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"observer":%d}}]}`, observedName, id)
}

// picks makes n picks on p with ctx, as the channel does for n calls one after the other,
// and counts them per instance id; a failed pick counts under "error: …". Each pick's Done
// is called, as gRPC does when the call ends, so the picks leave no request outstanding.
func (cl *client) picks(p gbalancer.Picker, ctx context.Context, n int) map[string]int {
	seen := map[string]int{}
	for range n {
		res, err := p.Pick(gbalancer.PickInfo{FullMethodName: "/switchyard.greeter.v1.Greeter/SayHello", Ctx: ctx})
		if err != nil {
			seen["error: "+err.Error()]++
			continue
		}
		seen[cl.obs.id(res.SubConn)]++
		if res.Done != nil {
			res.Done(gbalancer.DoneInfo{})
		}
	}
	return seen
}

// waitPicks waits until 987 picks with ctx on the balancer's latest picker satisfy ok,
// and returns that picker. It is for waiting on connectivity (an endpoint is READY when it is
// picked); what the test checks it asserts on the returned picker or on calls.
func (cl *client) waitPicks(what string, ctx context.Context, ok func(map[string]int) bool) gbalancer.Picker {
	cl.t.Helper()
	var p gbalancer.Picker
	testutil.Eventually(cl.t, what, func() bool {
		p, _ = cl.obs.latest()
		return p != nil && ok(cl.picks(p, ctx, 987))
	})
	return p
}

// waitReady waits until the latest picker picks every one of ids (with ctx: a sticky
// decision picks among its color only), i.e. they are all READY and not marked offline.
func (cl *client) waitReady(ctx context.Context, ids ...string) gbalancer.Picker {
	cl.t.Helper()
	return cl.waitPicks(fmt.Sprintf("%v ready in the client's picker", ids), ctx, func(seen map[string]int) bool {
		for _, id := range ids {
			if seen[id] == 0 {
				return false
			}
		}
		return true
	})
}

// waitRecord waits until the balancer has applied a resolver update whose records (by
// instance id) satisfy ok, and returns the picker it sent for that update or a later one:
// a picker that reflects the records. (endpointsharding sends its aggregated state at the end
// of UpdateClientConnState, so the last picker sent before that call returns is built from
// the update.)
func (cl *client) waitRecord(what string, ok func(map[string]balancer.EndpointInfo) bool) gbalancer.Picker {
	cl.t.Helper()
	var p gbalancer.Picker
	testutil.Eventually(cl.t, "the client's balancer to apply "+what, func() bool {
		cl.obs.mu.Lock()
		defer cl.obs.mu.Unlock()
		p = cl.obs.picker
		return cl.obs.applied != nil && ok(cl.obs.applied)
	})
	return p
}

// waitSubConn waits until the SubConn of instance id has reported state to pick_first (and
// the balancer has sent the picker that follows from it, if any).
func (cl *client) waitSubConn(id string, state connectivity.State) {
	cl.t.Helper()
	testutil.Eventually(cl.t, fmt.Sprintf("%s's SubConn in %v", id, state), func() bool {
		cl.obs.mu.Lock()
		defer cl.obs.mu.Unlock()
		for sc, st := range cl.obs.scState {
			if cl.obs.idOf[cl.obs.addrOf[sc]] == id && st == state {
				return true
			}
		}
		return false
	})
}

// advance moves the balancer's fake clock by d and returns the picker the warmup timer
// sends for the new time. Call it only when nothing else changes (every endpoint READY, no
// call in flight), so that the next picker is the timer's.
func (cl *client) advance(d time.Duration) gbalancer.Picker {
	cl.t.Helper()
	_, before := cl.obs.latest()
	cl.clock.Advance(d)
	var p gbalancer.Picker
	testutil.Eventually(cl.t, fmt.Sprintf("a picker after the clock moved %v", d), func() bool {
		var seq int
		p, seq = cl.obs.latest()
		return seq > before
	})
	return p
}

// calls makes n calls with `workers` goroutines and returns the answers per instance; it
// fails t on any error.
func calls(t testing.TB, c greeterpb.GreeterClient, ctx context.Context, n, workers int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	seen := map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				cctx, cancel := context.WithTimeout(ctx, testutil.Deadline)
				resp, err := c.SayHello(cctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
				cancel()
				if err != nil {
					failed.Store(err)
					return
				}
				mu.Lock()
				seen[resp.GetInstance()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("a call failed: %v", err)
	}
	return seen
}

// The observed policy: switchyard_weighted (built by balancer.NewWithClock) between gRPC and
// an observer that records what the balancer sends. The service config names the observer:
// {"switchyard_weighted_observed":{"observer":N}}.
const observedName = "switchyard_weighted_observed"

func init() { gbalancer.Register(observedBuilder{}) }

type observerMap struct {
	sync.Map
	next atomic.Int64
}

func (m *observerMap) add(o *observer) int64 {
	id := m.next.Add(1)
	m.Store(id, o)
	return id
}

var observers observerMap

type observedConfig struct {
	serviceconfig.LoadBalancingConfig
	Observer int64 `json:"observer"`
}

type observedBuilder struct{}

func (observedBuilder) Name() string { return observedName }

func (observedBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var c observedConfig
	if err := json.Unmarshal(js, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (observedBuilder) Build(cc gbalancer.ClientConn, opts gbalancer.BuildOptions) gbalancer.Balancer {
	return &observedBalancer{cc: cc, opts: opts}
}

// observedBalancer builds the real balancer at the first update, which names the observer.
type observedBalancer struct {
	cc    gbalancer.ClientConn
	opts  gbalancer.BuildOptions
	obs   *observer
	inner gbalancer.Balancer
}

func (b *observedBalancer) UpdateClientConnState(s gbalancer.ClientConnState) error {
	if b.inner == nil {
		cfg, _ := s.BalancerConfig.(*observedConfig)
		if cfg == nil {
			return fmt.Errorf("%s: no observer in the config", observedName)
		}
		o, ok := observers.Load(cfg.Observer)
		if !ok {
			return fmt.Errorf("%s: observer %d is gone", observedName, cfg.Observer)
		}
		b.obs = o.(*observer)
		b.obs.ClientConn = b.cc
		b.inner = balancer.NewWithClock(b.obs, b.opts, b.obs.clock, b.obs.log)
	}
	ids := map[string]string{}
	infos := map[string]balancer.EndpointInfo{}
	for _, ep := range s.ResolverState.Endpoints {
		if info, ok := balancer.EndpointInfoFrom(ep); ok {
			infos[info.ID] = info
			for _, a := range ep.Addresses {
				ids[a.Addr] = info.ID
			}
		}
	}
	b.obs.mu.Lock()
	for addr, id := range ids {
		b.obs.idOf[addr] = id
	}
	b.obs.mu.Unlock()
	err := b.inner.UpdateClientConnState(gbalancer.ClientConnState{ResolverState: s.ResolverState})
	b.obs.mu.Lock()
	b.obs.applied = infos
	b.obs.mu.Unlock()
	return err
}

func (b *observedBalancer) ResolverError(err error) {
	if b.inner != nil {
		b.inner.ResolverError(err)
	}
}

func (b *observedBalancer) UpdateSubConnState(gbalancer.SubConn, gbalancer.SubConnState) {}

func (b *observedBalancer) ExitIdle() {
	if b.inner != nil {
		b.inner.ExitIdle()
	}
}

func (b *observedBalancer) Close() {
	if b.inner != nil {
		b.inner.Close()
	}
}

// observer is the ClientConn the real balancer sees: it passes everything on to gRPC's and
// records the pickers sent and which address each SubConn dials.
type observer struct {
	gbalancer.ClientConn // gRPC's; set when the balancer is built
	clock                clockwork.Clock
	log                  *slog.Logger
	mu                   sync.Mutex
	addrOf               map[gbalancer.SubConn]string
	idOf                 map[string]string                        // address → instance id, from the resolver states
	scState              map[gbalancer.SubConn]connectivity.State // until it shuts down
	picker               gbalancer.Picker                         // the last one sent
	state                connectivity.State                       // the aggregated state it was sent with
	seq                  int                                      // pickers sent
	applied              map[string]balancer.EndpointInfo         // the last resolver state it has applied, by id
}

// NewSubConn notes which address the SubConn dials, and records its connectivity states
// after pick_first has handled them (and so after any picker that sends).
func (o *observer) NewSubConn(addrs []resolver.Address, opts gbalancer.NewSubConnOptions) (gbalancer.SubConn, error) {
	var sc gbalancer.SubConn // set before the SubConn connects, so before any state
	if listener := opts.StateListener; listener != nil {
		opts.StateListener = func(s gbalancer.SubConnState) {
			listener(s)
			o.mu.Lock()
			if s.ConnectivityState == connectivity.Shutdown {
				delete(o.scState, sc)
			} else {
				o.scState[sc] = s.ConnectivityState
			}
			o.mu.Unlock()
		}
	}
	created, err := o.ClientConn.NewSubConn(addrs, opts)
	if err == nil && len(addrs) > 0 {
		o.mu.Lock()
		sc = created
		o.addrOf[sc] = addrs[0].Addr
		o.mu.Unlock()
	}
	return created, err
}

// UpdateState passes the picker on, then records it: once the test sees a picker, the
// channel's calls use it.
func (o *observer) UpdateState(s gbalancer.State) {
	o.ClientConn.UpdateState(s)
	o.mu.Lock()
	o.picker, o.state = s.Picker, s.ConnectivityState
	o.seq++
	o.mu.Unlock()
}

// waitState waits until the balancer's last picker was sent with the aggregated state st
// (READY: the picker has a READY endpoint to pick), and returns that picker. A SubConn's own
// READY is not enough: pick_first reports it to the balancer through the health listener,
// which may come later.
func (cl *client) waitState(st connectivity.State) gbalancer.Picker {
	cl.t.Helper()
	var p gbalancer.Picker
	testutil.Eventually(cl.t, fmt.Sprintf("a picker sent in state %v", st), func() bool {
		cl.obs.mu.Lock()
		defer cl.obs.mu.Unlock()
		p = cl.obs.picker
		return p != nil && cl.obs.state == st
	})
	return p
}

// latest returns the last picker the balancer sent and how many it has sent.
func (o *observer) latest() (gbalancer.Picker, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.picker, o.seq
}

// id returns the instance id of the endpoint sc dials.
func (o *observer) id(sc gbalancer.SubConn) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if id, ok := o.idOf[o.addrOf[sc]]; ok {
		return id
	}
	return "unknown SubConn"
}
