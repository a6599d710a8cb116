package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Server is an embedded etcd behind a cuttable proxy.
//
// mu guards etcd and running; Stop and Start may be called from any goroutine but not
// concurrently with each other.
type Server struct {
	dir     string
	clients url.URL // unix socket etcd serves clients on
	peers   url.URL
	proxy   *proxy

	mu      sync.Mutex
	etcd    *embed.Etcd
	running bool
}

// New starts a server in a new temporary directory. Close removes it.
func New() (*Server, error) {
	// os.MkdirTemp keeps the path short: unix socket paths are limited to ~100 bytes.
	dir, err := os.MkdirTemp("", "etcdtest")
	if err != nil {
		return nil, fmt.Errorf("etcdtest: temp dir: %w", err)
	}
	s := &Server{
		dir:     dir,
		clients: url.URL{Scheme: "unix", Path: filepath.Join(dir, "c.sock")},
		peers:   url.URL{Scheme: "unix", Path: filepath.Join(dir, "p.sock")},
	}
	if err := s.startEtcd(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p, err := newProxy("unix", s.clients.Path)
	if err != nil {
		s.stopEtcd()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s.proxy = p
	return s, nil
}

// Start is New for tests: it fails t on error and closes the server in t.Cleanup. Clients
// created later with Client are cleaned up first, as embed requires for a fast shutdown.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *Server) startEtcd() error {
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = filepath.Join(s.dir, "data")
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 50
	cfg.ListenClientUrls = []url.URL{s.clients}
	cfg.AdvertiseClientUrls = []url.URL{s.clients}
	cfg.ListenPeerUrls = []url.URL{s.peers}
	cfg.AdvertisePeerUrls = []url.URL{s.peers}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcdtest: start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcdtest: etcd failed while starting: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return errors.New("etcdtest: etcd not ready after 30s")
	}
	s.mu.Lock()
	s.etcd, s.running = e, true
	s.mu.Unlock()
	return nil
}

func (s *Server) stopEtcd() {
	s.mu.Lock()
	e, running := s.etcd, s.running
	s.etcd, s.running = nil, false
	s.mu.Unlock()
	if running {
		e.Close()
	}
}

// Endpoints are the client endpoints (the proxy's loopback address). They stay the same
// across Stop and Start.
func (s *Server) Endpoints() []string { return []string{s.proxy.addr()} }

// DirectEndpoints reach etcd without the proxy, so they keep working while the proxy is Cut.
func (s *Server) DirectEndpoints() []string { return []string{s.clients.String()} }

// Stop cuts every client connection and stops etcd, keeping its data. Clients see
// "connection refused"-like failures until Start.
func (s *Server) Stop() {
	s.proxy.setUp(false)
	s.stopEtcd()
}

// Start brings a stopped server back with the same data and endpoints.
func (s *Server) Start() error {
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
	if !running {
		if err := s.startEtcd(); err != nil {
			return err
		}
	}
	s.proxy.setUp(true)
	return nil
}

// Cut drops every connection through the proxy and refuses new ones, while etcd keeps running
// (reachable through DirectEndpoints): a network partition between the clients and etcd.
func (s *Server) Cut() { s.proxy.setUp(false) }

// Heal undoes Cut.
func (s *Server) Heal() { s.proxy.setUp(true) }

// Close stops everything and removes the data. It is safe to call more than once.
func (s *Server) Close() {
	if s.proxy != nil {
		s.proxy.close()
	}
	s.stopEtcd()
	_ = os.RemoveAll(s.dir)
}

// NewClient returns a client of this server with a silent logger. The caller closes it.
func (s *Server) NewClient(endpoints []string) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
		// etcd's client keeps gRPC's default reconnect backoff (up to 120 s). A Registrar resets
		// it while its connection is down (users need no setting), but the tests' other users of
		// a client (rule clients, watchers, executors) after an etcd restart get a capped one.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcdtest: client: %w", err)
	}
	return c, nil
}

// Client returns a client through the proxy, closed in t.Cleanup (before the server).
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return s.client(t, s.Endpoints())
}

// DirectClient returns a client that bypasses the proxy, closed in t.Cleanup.
func (s *Server) DirectClient(t testing.TB) *clientv3.Client {
	t.Helper()
	return s.client(t, s.DirectEndpoints())
}

func (s *Server) client(t testing.TB, eps []string) *clientv3.Client {
	t.Helper()
	c, err := s.NewClient(eps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Compact compacts etcd's history up to the current revision, through the direct endpoint.
func (s *Server) Compact(ctx context.Context) (int64, error) {
	c, err := s.NewClient(s.DirectEndpoints())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	resp, err := c.Get(ctx, "/")
	if err != nil {
		return 0, fmt.Errorf("etcdtest: compact: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, fmt.Errorf("etcdtest: compact: %w", err)
	}
	return rev, nil
}

// ForExample starts a server and a client of it for a runnable Example, panicking on error
// (an Example has no *testing.T). stop closes both.
func ForExample() (cli *clientv3.Client, stop func()) {
	s, err := New()
	if err != nil {
		panic(err)
	}
	cli, err = s.NewClient(s.Endpoints())
	if err != nil {
		s.Close()
		panic(err)
	}
	return cli, func() { _ = cli.Close(); s.Close() }
}
