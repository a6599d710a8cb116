package etcdtest_test

import (
	"context"
	"errors"
	"flag"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
)

// memberClient reaches member i alone, so that a read shows what that member has.
func memberClient(t *testing.T, c *etcdtest.Cluster, i int) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints()[i : i+1],
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func TestClusterStartsWithALeaderAndServesEveryEndpoint(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	eps := c.Endpoints()
	if len(eps) != 3 {
		t.Fatalf("Endpoints() = %v, want 3", eps)
	}
	lead := c.WaitLeader(t)
	if lead < 0 || lead > 2 {
		t.Fatalf("WaitLeader = %d", lead)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Client(t).Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	for i := range eps {
		if !c.Running(i) {
			t.Errorf("member %d not running", i)
		}
		resp, err := memberClient(t, c, i).Get(ctx, "/k")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("Get from member %d: %v %v", i, resp, err)
		}
	}
}

func TestClusterLeaderKilledAndRestartedCatchesUp(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := c.WaitLeader(t)
	oldCli := memberClient(t, c, old)
	if _, err := oldCli.Put(ctx, "/before", "1"); err != nil {
		t.Fatal(err)
	}

	begin := time.Now()
	c.Stop(old)
	stopped := time.Since(begin)
	if c.Running(old) {
		t.Fatal("Running after Stop")
	}
	c.Stop(old) // a no-op
	lead := c.WaitLeader(t)
	t.Logf("Stop took %v; a new leader after %v", stopped, time.Since(begin))
	if lead == old {
		t.Fatalf("leader is still the stopped member %d", old)
	}
	if _, err := cli.Put(ctx, "/during", "2"); err != nil {
		t.Fatalf("Put with one member of three down: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := oldCli.Get(short, "/before")
	cancelShort()
	if err == nil {
		t.Fatal("Get from the stopped member succeeded")
	}

	if err := c.Restart(old); err != nil {
		t.Fatal(err)
	}
	if !c.Running(old) {
		t.Fatal("not Running after Restart")
	}
	// A serializable read answers from the member's own store: it has caught up. (A new
	// client: oldCli's reconnect backoff would wait a second.)
	oldCli = memberClient(t, c, old)
	var resp *clientv3.GetResponse
	for {
		resp, err = oldCli.Get(ctx, "/during", clientv3.WithSerializable())
		if err == nil && len(resp.Kvs) == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the restarted member never had the key written while it was down: %v %v", resp, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("/during = %q", resp.Kvs[0].Value)
	}
	if got := c.WaitLeader(t); got < 0 {
		t.Fatalf("no leader after restart: %d", got)
	}
}

func TestClusterQuorumLossFailsWritesUntilAMemberReturns(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lead := c.WaitLeader(t)
	a, b := (lead+1)%3, (lead+2)%3
	c.Stop(lead)
	c.Stop(a)

	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := cli.Put(short, "/k", "lost")
	cancelShort()
	// The client's deadline, or on a loaded machine etcd's own "request timed out" first.
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, rpctypes.ErrTimeout) {
		t.Fatalf("Put without a quorum: %v, want a deadline exceeded or etcd's request timed out", err)
	}
	short, cancelShort = context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = c.Leader(short)
	cancelShort()
	if err == nil {
		t.Fatalf("Leader found one with only member %d running", b)
	}

	if err := c.Restart(a); err != nil {
		t.Fatal(err)
	}
	if l := c.WaitLeader(t); l != a && l != b {
		t.Fatalf("leader %d is not running", l)
	}
	if _, err := cli.Put(ctx, "/k", "back"); err != nil {
		t.Fatalf("Put after a quorum returned: %v", err)
	}
	if err := c.Restart(lead); err != nil {
		t.Fatal(err)
	}
	resp, err := memberClient(t, c, lead).Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "back" {
		t.Fatalf("Get from the last member restarted: %v %v", resp, err)
	}
}

func TestNewClusterRejectsAnEvenSize(t *testing.T) {
	if c, err := etcdtest.NewCluster(2); err == nil {
		c.Close()
		t.Fatal("NewCluster(2) succeeded")
	}
}

var quiet = flag.Duration("etcdtest.quiet", 0, "run TestClusterQuietKeepsItsLeader for this long (e.g. 20s, under CPU burners: does a 50 ms election storm?)")

// TestClusterQuietKeepsItsLeader counts elections in a cluster nobody touches: with 10 ms
// ticks and a 50 ms election, a starved process could miss heartbeats and elect again.
func TestClusterQuietKeepsItsLeader(t *testing.T) {
	if *quiet == 0 {
		t.Skip("run with -etcdtest.quiet=20s")
	}
	for _, n := range []int{3, 5} {
		c := etcdtest.StartCluster(t, n)
		cli := memberClient(t, c, 0)
		c.WaitLeader(t)
		term := func() uint64 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := cli.Status(ctx, c.Endpoints()[0])
			if err != nil {
				t.Fatal(err)
			}
			return st.RaftTerm
		}
		first := term()
		writes, failed := 0, 0
		for end := time.Now().Add(*quiet); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if _, err := cli.Put(ctx, "/q", "v"); err != nil {
				failed++
			}
			cancel()
			writes++
		}
		t.Logf("%d members, %v: %d elections, %d of %d writes failed", n, *quiet, term()-first, failed, writes)
	}
}

func TestClusterRestartedWholeKeepsItsData(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.Stop(i)
	}
	// Without a quorum a member cannot serve: Restart returns without waiting for it.
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := c.Leader(short)
	cancelShort()
	if err == nil {
		t.Fatal("Leader found one with one member of three running")
	}
	if err := c.Restart(1); err != nil {
		t.Fatal(err)
	}
	if l := c.WaitLeader(t); l != 0 && l != 1 {
		t.Fatalf("leader %d is not running", l)
	}
	resp, err := memberClient(t, c, 0).Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get from a member restarted without a quorum: %v %v", resp, err)
	}
}
