package registry_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quiet is a logger for tests: warnings and errors only, to stderr only when -v.
func quiet(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	level := slog.LevelWarn
	if os.Getenv("SWITCHYARD_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// startGreeter serves the greeter on a loopback port, stopped at cleanup.
func startGreeter(t testing.TB, id string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	greeterpb.RegisterGreeterServer(s, &greeterpb.Server{Instance: id})
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// register registers a greeter instance with a short TTL and closes it at cleanup.
func register(t testing.TB, cli *clientv3.Client, app, id, addr string, mod ...func(*registry.Config)) *registry.Registrar {
	t.Helper()
	cfg := registry.Config{
		Client:         cli,
		Instance:       registry.Instance{App: app, ID: id, Addr: addr, Color: registry.ColorBlue, Version: "v1"},
		TTL:            time.Second,
		RequestTimeout: time.Second,
		Logger:         quiet(t),
	}
	for _, m := range mod {
		m(&cfg)
	}
	r, err := registry.NewRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Register(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// dial opens a consumer of switchyard:///app through the resolver.
func dial(t testing.TB, cli *clientv3.Client, app string) greeterpb.GreeterClient {
	t.Helper()
	b, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: quiet(t), RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(registry.Scheme+":///"+app, grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return greeterpb.NewGreeterClient(cc)
}

// watch starts a Watcher of app that records every update.
func watch(t testing.TB, cli *clientv3.Client, app string, mod ...func(*registry.WatcherConfig)) *recorder {
	t.Helper()
	rec := &recorder{changed: make(chan struct{}, 1)}
	cfg := registry.WatcherConfig{Client: cli, App: app, OnUpdate: rec.add, Logger: quiet(t), RequestTimeout: time.Second}
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
	changed chan struct{}
}

func (r *recorder) add(u registry.Update) {
	r.mu.Lock()
	r.updates = append(r.updates, u)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) all() []registry.Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]registry.Update(nil), r.updates...)
}

// waitFor waits until the latest good update satisfies ok, or fails t after timeout.
func (r *recorder) waitFor(t testing.TB, timeout time.Duration, what string, ok func([]registry.Instance) bool) []registry.Instance {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if u := r.w.Last(); u.Err == nil && u.Instances != nil && ok(u.Instances) {
			return u.Instances
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s; last update: %+v", timeout, what, r.w.Last())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func ids(in []registry.Instance) []string {
	out := make([]string, len(in))
	for i, x := range in {
		out[i] = x.ID
	}
	return out
}

func hasIDs(want ...string) func([]registry.Instance) bool {
	return func(in []registry.Instance) bool {
		got := ids(in)
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if got[i] != want[i] {
				return false
			}
		}
		return true
	}
}

func mustParse(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
