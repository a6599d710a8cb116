package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Cluster is n embedded etcd members in one process, each serving clients on its own loopback
// endpoint.
//
// Each member serves clients on a unix socket and peers on a loopback TCP port, each behind a
// cuttable proxy of its own (as Server's), whose loopback port is the member's for the
// cluster's life: a restarted member listens anew and the proxies forward to it. Members
// advertise their proxies, so a client that syncs its endpoints from the member list
// (AutoSyncInterval) keeps them. Cutting the proxies is what makes Stop a crash: the member's
// client streams and peer connections drop at once, and none is left open in the process.
//
// Stop, Restart and Running may be called from any goroutine; a Restart waits for a Stop of
// the same member in progress to finish.
type Cluster struct {
	dir     string
	token   string
	members []*member
	initial string // InitialCluster: "m0=http://…,m1=…"
}

// member is one etcd of a Cluster. mu guards etcd and running.
type member struct {
	name    string
	dataDir string
	clients url.URL // unix socket etcd serves clients on
	proxy   *proxy  // clients' endpoint, to clients
	peers   *proxy  // peers' endpoint, to the member's peer listener

	// op serializes Stop and Restart of the member: a Restart waits until a Stop in progress
	// has closed the old server, whose Close would otherwise remove the new one's socket.
	op sync.Mutex

	mu      sync.Mutex
	etcd    *embed.Etcd
	running bool
}

// readyTimeout bounds the wait for a member that has a quorum to serve clients.
const readyTimeout = 30 * time.Second

// NewCluster starts n members (n odd, 3 or 5) in a new temp dir and waits until they have a
// leader.
func NewCluster(n int) (*Cluster, error) {
	if n < 1 || n%2 == 0 {
		return nil, fmt.Errorf("etcdtest: a cluster of %d members; give an odd number (3 or 5)", n)
	}
	dir, err := os.MkdirTemp("", "etcdc")
	if err != nil {
		return nil, fmt.Errorf("etcdtest: temp dir: %w", err)
	}
	c := &Cluster{dir: dir, token: "etcdtest-" + filepath.Base(dir)}
	fail := func(err error) (*Cluster, error) {
		c.Close()
		return nil, err
	}
	var initial []string
	for i := range n {
		m := &member{
			name:    "m" + strconv.Itoa(i),
			dataDir: filepath.Join(dir, "m"+strconv.Itoa(i)),
			clients: url.URL{Scheme: "unix", Path: filepath.Join(dir, "c"+strconv.Itoa(i)+".sock")},
		}
		var err error
		if m.proxy, err = newProxy("unix", m.clients.Path); err != nil {
			return fail(err)
		}
		if m.peers, err = newProxy("tcp", ""); err != nil {
			m.proxy.close()
			return fail(err)
		}
		m.peers.setUp(false) // until the member listens
		c.members = append(c.members, m)
		peer := m.peerURL()
		initial = append(initial, m.name+"="+peer.String())
	}
	c.initial = strings.Join(initial, ",")
	for _, m := range c.members {
		if err := c.start(m, embed.ClusterStateFlagNew); err != nil {
			return fail(err)
		}
	}
	for _, m := range c.members {
		if err := m.waitReady(); err != nil {
			return fail(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := c.Leader(ctx); err != nil {
		return fail(err)
	}
	return c, nil
}

// StartCluster is NewCluster for tests: it fails t on error and closes the cluster in
// t.Cleanup, after the clients made by Client.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := NewCluster(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (c *Cluster) start(m *member, state string) error {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dataDir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 50
	cfg.ListenClientUrls = []url.URL{m.clients}
	cfg.AdvertiseClientUrls = []url.URL{{Scheme: "http", Host: m.proxy.addr()}}
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: "127.0.0.1:0"}}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL()}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = state
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcdtest: start member %s: %w", m.name, err)
	}
	m.mu.Lock()
	m.etcd, m.running = e, true
	m.mu.Unlock()
	m.peers.setTarget("tcp", e.Peers[0].Addr().String())
	m.peers.setUp(true)
	m.proxy.setUp(true)
	return nil
}

func (m *member) peerURL() url.URL { return url.URL{Scheme: "http", Host: m.peers.addr()} }

// waitReady waits until m serves clients, which takes a quorum of running members.
func (m *member) waitReady() error {
	m.mu.Lock()
	e := m.etcd
	m.mu.Unlock()
	if e == nil {
		return fmt.Errorf("etcdtest: member %s is stopped", m.name)
	}
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcdtest: member %s failed while starting: %w", m.name, err)
	case <-time.After(readyTimeout):
		return fmt.Errorf("etcdtest: member %s not ready after %v", m.name, readyTimeout)
	}
}

// Endpoints are every member's client endpoint, in member order. They stay the same across
// Stop and Restart.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.proxy.addr()
	}
	return eps
}

// Config is the client config Client uses: every endpoint, the cluster settings registry/doc.go
// recommends ("etcd client settings": AutoSyncInterval, dial timeout, keepalive) and a silent
// logger. A test that needs more (an interceptor, say) adds to it and calls clientv3.New.
func (c *Cluster) Config() clientv3.Config {
	return clientv3.Config{
		Endpoints:            c.Endpoints(),
		AutoSyncInterval:     30 * time.Second,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
	}
}

// Client is a client given every endpoint with the recommended cluster config (Config),
// closed in t.Cleanup before the cluster.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(c.Config())
	if err != nil {
		t.Fatalf("etcdtest: cluster client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Leader returns the index of the current leader, waiting (up to ctx) until the running
// members agree on one: every running member names the same leader, and it is running.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if i, ok := c.agreedLeader(); ok {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("etcdtest: no leader the running members %v agree on: %w", c.runningIndexes(), ctx.Err())
		case <-tick.C:
		}
	}
}

func (c *Cluster) agreedLeader() (int, bool) {
	var lead uint64
	leader := -1
	for i, m := range c.members {
		m.mu.Lock()
		e, running := m.etcd, m.running
		m.mu.Unlock()
		if !running {
			continue
		}
		l := e.Server.Lead()
		if l == 0 || (lead != 0 && l != lead) {
			return -1, false
		}
		lead = l
		if uint64(e.Server.MemberID()) == l {
			leader = i
		}
	}
	return leader, leader >= 0
}

func (c *Cluster) runningIndexes() []int {
	var r []int
	for i := range c.members {
		if c.Running(i) {
			r = append(r, i)
		}
	}
	return r
}

// WaitLeader is Leader for tests: it waits up to 10 s and fails t if no leader is agreed on.
func (c *Cluster) WaitLeader(t testing.TB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	i, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// Stop stops member i abruptly, as a crash: its client connections are cut at once (through
// its proxy), its raft node stops without handing its leadership over, its peer connections
// are cut, then the member closes; its data stays. Stop of a stopped member is a no-op.
func (c *Cluster) Stop(i int) {
	m := c.members[i]
	m.op.Lock()
	defer m.op.Unlock()
	m.proxy.setUp(false)
	m.mu.Lock()
	e, running := m.etcd, m.running
	m.etcd, m.running = nil, false
	m.mu.Unlock()
	if !running {
		return
	}
	// HardStop first: Close alone would transfer a leader's leadership before stopping.
	e.Server.HardStop()
	m.peers.setUp(false)
	e.Close()
}

// Restart starts member i again on its data and the same endpoints (clients keep their
// endpoint list). If a quorum of members runs with it, Restart returns once it serves
// clients; otherwise it returns at once, and the member serves when a quorum is back.
// Restart of a running member is a no-op.
func (c *Cluster) Restart(i int) error {
	m := c.members[i]
	m.op.Lock()
	defer m.op.Unlock()
	if c.Running(i) {
		return nil
	}
	if err := c.start(m, embed.ClusterStateFlagExisting); err != nil {
		return err
	}
	if len(c.runningIndexes()) <= len(c.members)/2 {
		return nil
	}
	return m.waitReady()
}

// Running reports whether member i runs.
func (c *Cluster) Running(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.running
}

// Close stops every member and removes the data. It is safe to call more than once.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Stop(i)
			// Only now: a peer's connection to a member still running is closed here.
			m.proxy.close()
			m.peers.close()
		}()
	}
	wg.Wait()
	_ = os.RemoveAll(c.dir)
}
