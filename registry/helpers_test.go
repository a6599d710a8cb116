package registry_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTTL is the lease TTL register uses unless a test asks for shortTTL: long enough that a
// loaded machine never lets a kept-alive lease lapse between two keepalives.
const testTTL = 5 * time.Second

// shortTTL is for tests whose point is a lease expiring or outliving its TTL.
func shortTTL(c *registry.Config) { c.TTL = time.Second }

// register registers a greeter instance with TTL testTTL and closes it at cleanup.
func register(t testing.TB, cli *clientv3.Client, app, id, addr string, mod ...func(*registry.Config)) *registry.Registrar {
	t.Helper()
	cfg := registry.Config{
		Client:         cli,
		Instance:       registry.Instance{App: app, ID: id, Addr: addr, Color: registry.ColorBlue, Version: "v1"},
		TTL:            testTTL,
		RequestTimeout: time.Second,
		Logger:         testutil.Logger(t),
	}
	for _, m := range mod {
		m(&cfg)
	}
	r, err := registry.NewRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	if err := r.Register(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// consumer is a client of switchyard:///app through the resolver. It taps the resolver's
// ClientConn, so a test can wait until gRPC has taken a resolver state: UpdateState returns
// only after the balancer has processed the state and sent its new picker, so every RPC that
// starts after Resolved saw a state holds to it.
type consumer struct {
	greeterpb.GreeterClient

	mu    sync.Mutex
	state resolver.State // the last state gRPC took
	n     int            // how many states it took
}

// dial opens a consumer of switchyard:///app through the resolver.
func dial(t testing.TB, cli *clientv3.Client, app string, mod ...func(*registry.ResolverConfig)) *consumer {
	t.Helper()
	cfg := registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t), RequestTimeout: time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	b, err := registry.NewResolverBuilder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &consumer{}
	c.GreeterClient = greeterpb.NewGreeterClient(testutil.Dial(t, registry.Scheme+":///"+app,
		grpc.WithResolvers(tapBuilder{Builder: b, c: c})))
	return c
}

// instances are the instance records of the last state gRPC took, in the resolver's order.
func (c *consumer) instances() []registry.Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []registry.Instance
	for _, ep := range c.state.Endpoints {
		if in, ok := registry.InstanceFromEndpoint(ep); ok {
			out = append(out, in)
		}
	}
	return out
}

// resolved waits until gRPC has taken a resolver state whose instances satisfy ok.
func (c *consumer) resolved(t testing.TB, what string, ok func([]registry.Instance) bool) []registry.Instance {
	t.Helper()
	var got []registry.Instance
	testutil.Eventually(t, "the consumer's resolver to hand gRPC "+what, func() bool {
		c.mu.Lock()
		n := c.n
		c.mu.Unlock()
		got = c.instances()
		return n > 0 && ok(got)
	})
	return got
}

type tapBuilder struct {
	resolver.Builder
	c *consumer
}

func (b tapBuilder) Build(target resolver.Target, cc resolver.ClientConn, opts resolver.BuildOptions) (resolver.Resolver, error) {
	return b.Builder.Build(target, tapCC{ClientConn: cc, c: b.c}, opts)
}

type tapCC struct {
	resolver.ClientConn
	c *consumer
}

func (t tapCC) UpdateState(s resolver.State) error {
	err := t.ClientConn.UpdateState(s) // returns once the balancer has processed s
	t.c.mu.Lock()
	t.c.state, t.c.n = s, t.c.n+1
	t.c.mu.Unlock()
	return err
}

// watch starts a Watcher of app that records every update.
func watch(t testing.TB, cli *clientv3.Client, app string, mod ...func(*registry.WatcherConfig)) *recorder {
	t.Helper()
	rec := &recorder{}
	cfg := registry.WatcherConfig{Client: cli, App: app, OnUpdate: rec.add, Logger: testutil.Logger(t), RequestTimeout: time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	w, err := registry.NewWatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec.w = w
	t.Cleanup(w.Close)
	return rec
}

type recorder struct {
	w       *registry.Watcher
	mu      sync.Mutex
	updates []registry.Update
}

func (r *recorder) add(u registry.Update) {
	r.mu.Lock()
	r.updates = append(r.updates, u)
	r.mu.Unlock()
}

func (r *recorder) all() []registry.Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.updates)
}

// waitFor waits until the latest good update satisfies ok and returns its instances.
func (r *recorder) waitFor(t testing.TB, what string, ok func([]registry.Instance) bool) []registry.Instance {
	t.Helper()
	var got []registry.Instance
	testutil.Eventually(t, what, func() bool {
		u := r.w.Last()
		got = u.Instances
		return u.Err == nil && u.Instances != nil && ok(u.Instances)
	})
	return got
}

func ids(in []registry.Instance) []string {
	out := make([]string, len(in))
	for i, x := range in {
		out[i] = x.ID
	}
	return out
}

func hasIDs(want ...string) func([]registry.Instance) bool {
	return func(in []registry.Instance) bool { return slices.Equal(ids(in), want) }
}

func mustParse(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// pastTTL waits, on etcd's clock rather than the test's, until etcd has had the time to
// expire every lease of TTL ttl that no keepalive renewed after pastTTL was called. It grants
// a probe lease of twice ttl and returns once etcd has revoked it. The margin of one ttl
// covers etcd's expiry sweep (every 500 ms; leases found expired in one sweep are revoked
// concurrently) and the extension etcd gives every lease when it restarts, so a lease that
// was not renewed is revoked well before the probe. direct must reach etcd.
func pastTTL(t testing.TB, direct *clientv3.Client, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	probe, err := direct.Grant(ctx, int64(2*ttl/time.Second))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, fmt.Sprintf("etcd to expire a probe lease of %v", 2*ttl), func() bool {
		resp, err := direct.TimeToLive(ctx, probe.ID)
		return err == nil && resp.TTL == -1
	})
}

// keepAliveClient is a client of e through its proxy whose keepalives give up sooner on a
// lease they never had an answer for: etcd's client closes a keepalive that got no answer
// within the TTL, but waits DialTimeout+1s (3s with etcdtest's client) for the first answer.
// A test that stops etcd soon after registering uses it to see the lease lost after about
// the TTL either way.
func keepAliveClient(t testing.TB, e *etcdtest.Server) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: 100 * time.Millisecond, // the first keepalive waits 1.1s for an answer
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// leaseAlive reports whether etcd still has lease id.
func leaseAlive(t testing.TB, cli *clientv3.Client, id clientv3.LeaseID) bool {
	t.Helper()
	resp, err := cli.TimeToLive(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return resp.TTL != -1
}

// eventsSince returns every event on key from revision from up to etcd's revision at the
// call: it watches from from and returns at a progress notification of a revision at least
// as new, which etcd sends only once the watch has delivered everything before it.
func eventsSince(t testing.TB, cli *clientv3.Client, key string, from int64) []*clientv3.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	now, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	wch := cli.Watch(ctx, key, clientv3.WithRev(from))
	ask := time.NewTicker(10 * time.Millisecond) // a request made before the watch caught up is dropped
	defer ask.Stop()
	var evs []*clientv3.Event
	for {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				t.Fatalf("watching %s from revision %d: %v (closed: %v)", key, from, resp.Err(), !ok)
			}
			evs = append(evs, resp.Events...)
			if resp.IsProgressNotify() && resp.Header.Revision >= now.Header.Revision {
				return evs
			}
		case <-ask.C:
			_ = cli.RequestProgress(ctx)
		}
	}
}
