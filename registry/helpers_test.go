package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

func TestMain(m *testing.M) { testutil.MainParallel(m, 12) }

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
		Instance:       registry.Record{App: app, ID: id, Addr: addr, Color: deploy.Blue, Version: "v1"},
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
	// Registering is this helper's setup, not what the tests check: on a machine loaded far
	// past its cores a request can outlast the 1 s RequestTimeout, so try again until the
	// deadline (a failed Register leaves the Registrar as it was).
	testutil.EventuallyNoError(t, "registering "+id, func() error {
		err := r.Register(context.Background())
		if err != nil && !errors.Is(err, registry.ErrEtcdUnavailable) {
			t.Fatal(err)
		}
		return err
	})
	return r
}

// waitRegistered waits until each Registrar says registered: a short lease can lapse on a
// loaded machine, and a test that begins an outage wants it to begin from there.
func waitRegistered(t testing.TB, rs ...*registry.Registrar) {
	t.Helper()
	for _, r := range rs {
		testutil.Eventually(t, r.Key()+" registered", func() bool { return r.State() == registry.StateRegistered })
	}
}

// consumer is a client of switchyard:///app through the resolver. It taps the resolver's
// ClientConn, so a test can wait until gRPC has taken a resolver state: UpdateState returns
// only after the balancer has processed the state and sent its new picker, so every RPC that
// starts after Resolved saw a state holds to it.
type consumer struct {
	greeterpb.GreeterClient
	cc *grpc.ClientConn

	sizes *stateSizes // if set, records the size of every state gRPC took

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
	c.cc = testutil.Dial(t, deploy.Scheme+":///"+app, grpc.WithResolvers(tapBuilder{Builder: b, c: c}))
	c.GreeterClient = greeterpb.NewGreeterClient(c.cc)
	return c
}

// instances are the instances of the last state gRPC took, in the resolver's order, as far as
// the endpoints tell them (address and balancer.EndpointInfo; Degraded is "degraded" or "").
func (c *consumer) instances() []registry.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []registry.Record
	for _, ep := range c.state.Endpoints {
		if in, ok := endpointInstance(ep); ok {
			out = append(out, in)
		}
	}
	return out
}

// endpointInstance is what ep tells of its instance: its address and balancer.EndpointInfo.
func endpointInstance(ep resolver.Endpoint) (registry.Record, bool) {
	info, ok := balancer.EndpointInfoFrom(ep)
	if !ok || len(ep.Addresses) != 1 {
		return registry.Record{}, false
	}
	in := registry.Record{ID: info.ID, Addr: ep.Addresses[0].Addr, Color: deploy.Color(info.Color),
		Channel: info.Channel, Weight: info.Weight, TrafficWeight: info.TrafficWeight, StartTime: info.StartTime,
		Warmup: info.Warmup, Epoch: info.Epoch}
	if info.Degraded {
		in.Degraded = "degraded"
	}
	return in, true
}

// resolved waits until gRPC has taken a resolver state whose instances satisfy ok.
func (c *consumer) resolved(t testing.TB, what string, ok func([]registry.Record) bool) []registry.Record {
	t.Helper()
	var got []registry.Record
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
	if t.c.sizes != nil {
		t.c.sizes.add(len(s.Endpoints))
	}
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
	updates []registry.Snapshot
}

func (r *recorder) add(u registry.Snapshot) {
	r.mu.Lock()
	r.updates = append(r.updates, u)
	r.mu.Unlock()
}

func (r *recorder) all() []registry.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.updates)
}

// waitFor waits until the latest good update satisfies ok and returns its instances.
func (r *recorder) waitFor(t testing.TB, what string, ok func([]registry.Record) bool) []registry.Record {
	t.Helper()
	var got []registry.Record
	testutil.Eventually(t, what, func() bool {
		u := r.w.Last()
		got = u.Instances
		return u.Err == nil && u.Instances != nil && ok(u.Instances)
	})
	return got
}

func ids(in []registry.Record) []string {
	out := make([]string, len(in))
	for i, x := range in {
		out[i] = x.ID
	}
	return out
}

func hasIDs(want ...string) func([]registry.Record) bool {
	return func(in []registry.Record) bool { return slices.Equal(ids(in), want) }
}

func mustParse(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// keepAliveClient is a client of e through its proxy for registrars whose keepalives a test
// follows: it records every renewal etcd answers (see renewals). It differs from etcdtest's
// client in two ways that only make a test quicker. Its keepalives give up sooner on a lease
// they never had an answer for: etcd's client closes a keepalive that got no answer within
// the TTL, but waits DialTimeout+1s (3s with etcdtest's client) for the first answer, so a
// test that stops etcd soon after registering sees the lease lost after about the TTL either
// way. And it reconnects within 100 ms of etcd coming back rather than 500 ms.
func keepAliveClient(t testing.TB, e *etcdtest.Server) (*clientv3.Client, *renewals) {
	t.Helper()
	rn := &renewals{last: map[clientv3.LeaseID]time.Time{}}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: 100 * time.Millisecond, // the first keepalive waits 1.1s for an answer
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 100 * time.Millisecond},
				MinConnectTimeout: time.Second,
			}),
			grpc.WithChainStreamInterceptor(rn.intercept),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, rn
}

// renewals records when etcd renewed the leases a client keeps alive: for each lease, the
// latest keepalive etcd answered with a positive TTL, stamped with the time its request was
// sent. etcd renewed the lease no earlier than that, and it answers a keepalive of a lease
// that has expired with TTL 0 or "not found", so such a renewal proves the lease was alive
// at that time.
type renewals struct {
	mu   sync.Mutex
	last map[clientv3.LeaseID]time.Time
}

// since waits until etcd has renewed lease id for a keepalive sent at t or later.
func (rn *renewals) since(tb testing.TB, id clientv3.LeaseID, t time.Time) {
	tb.Helper()
	testutil.Eventually(tb, fmt.Sprintf("etcd to renew lease %x for a keepalive sent after %v", id, t.Format(time.StampMilli)), func() bool {
		return rn.renewedSince(id, t)
	})
}

// renewedSince reports whether etcd has renewed lease id for a keepalive sent at t or later.
func (rn *renewals) renewedSince(id clientv3.LeaseID, t time.Time) bool {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return !rn.last[id].Before(t)
}

func (rn *renewals) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || method != pb.Lease_LeaseKeepAlive_FullMethodName {
		return s, err
	}
	return &keepAliveStream{ClientStream: s, rn: rn, sent: map[int64][]time.Time{}}, nil
}

// keepAliveStream matches the answers on one keepalive stream to its requests: etcd answers
// the requests of a stream one by one, in order.
type keepAliveStream struct {
	grpc.ClientStream
	rn *renewals

	mu   sync.Mutex
	sent map[int64][]time.Time // by lease: when the requests not answered yet were sent
}

func (s *keepAliveStream) SendMsg(m any) error {
	if req, ok := m.(*pb.LeaseKeepAliveRequest); ok {
		s.mu.Lock()
		s.sent[req.ID] = append(s.sent[req.ID], time.Now())
		s.mu.Unlock()
	}
	return s.ClientStream.SendMsg(m)
}

func (s *keepAliveStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	resp, ok := m.(*pb.LeaseKeepAliveResponse)
	if err != nil || !ok {
		return err
	}
	s.mu.Lock()
	q := s.sent[resp.ID]
	if len(q) == 0 {
		s.mu.Unlock()
		return nil
	}
	sentAt := q[0]
	s.sent[resp.ID] = q[1:]
	s.mu.Unlock()
	if resp.TTL > 0 {
		id := clientv3.LeaseID(resp.ID)
		s.rn.mu.Lock()
		if sentAt.After(s.rn.last[id]) {
			s.rn.last[id] = sentAt
		}
		s.rn.mu.Unlock()
	}
	return nil
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
