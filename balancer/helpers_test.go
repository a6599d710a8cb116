package balancer_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var silent = slog.New(slog.NewTextHandler(io.Discard, nil))

// instance is one greeter server registered in etcd.
type instance struct {
	id       string
	reg      *registry.Registrar
	srv      *grpc.Server
	accepted atomic.Int32 // TCP connections accepted
	offline  atomic.Bool  // answer with the offline flag
	delay    atomic.Int64 // handler delay in ns
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
func (c *cluster) start(in registry.Instance) *instance {
	t := c.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inst := &instance{id: in.ID}
	inst.srv = grpc.NewServer(grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if inst.offline.Load() {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(balancer.OfflineHeader, "1"))
		}
		if d := inst.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		return h(ctx, req)
	}))
	greeterpb.RegisterGreeterServer(inst.srv, &greeterpb.Server{Instance: in.ID})
	go func() { _ = inst.srv.Serve(countingListener{ln, &inst.accepted}) }()
	t.Cleanup(inst.srv.Stop)
	in.App, in.Addr = "greeter", ln.Addr().String()
	inst.reg, err = registry.NewRegistrar(registry.Config{Client: c.cli, Instance: in, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.reg.Close(context.Background()) })
	if err := inst.reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.byID[in.ID] = inst
	c.mu.Unlock()
	return inst
}

// dial returns a client of switchyard:///greeter through the resolver, configured by mod.
func (c *cluster) dial(mod ...func(*registry.ResolverConfig)) greeterpb.GreeterClient {
	t := c.t
	t.Helper()
	cfg := registry.ResolverConfig{Client: c.cli, Logger: silent}
	for _, m := range mod {
		m(&cfg)
	}
	rb, err := registry.NewResolverBuilder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("switchyard:///greeter", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return greeterpb.NewGreeterClient(cc)
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
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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

// waitRecord waits until a watcher of greeter sees ok.
func (c *cluster) waitRecord(what string, ok func([]registry.Instance) bool) {
	t := c.t
	t.Helper()
	got := make(chan struct{}, 1)
	w, err := registry.NewWatcher(registry.WatcherConfig{Client: c.cli, App: "greeter", Logger: silent,
		OnUpdate: func(u registry.Update) {
			if u.Err == nil && ok(u.Instances) {
				select {
				case got <- struct{}{}:
				default:
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatalf("registry never showed %s", what)
	}
	time.Sleep(100 * time.Millisecond) // the client's own watch gets the same event
}
