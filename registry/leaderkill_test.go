package registry_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// Issue 19 item 1: right after the etcd leader is killed, a surviving member forwards a write
// to the dead leader and etcd drops it, so a request that waited for its answer waited out the
// whole RequestTimeout (5 s) although a new leader was elected within tens of milliseconds.
// Each write is made in attempts, the first 500 ms long, so Update, Deregister and Register
// right after a leader kill return once a new leader takes them, within RequestTimeout.
func TestWritesRightAfterALeaderKillTakeShortAttempts(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	// Twice the default: a write forwarded to the dead leader is never answered however long
	// it waits, so the old single request fails after any timeout, while an oversubscribed CPU
	// was once seen to keep a 3-member cluster from taking writes for most of 5 s.
	const requestTimeout = 2 * registry.DefaultRequestTimeout
	r := register(t, cli, "order", "o1", "10.0.0.1:8080", func(cfg *registry.Config) {
		cfg.RequestTimeout = requestTimeout
	})
	key := r.Key()
	recordHas := func(want func(*clientv3.GetResponse) bool) bool {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
		defer cancel()
		resp, err := cli.Get(ctx, key)
		return err == nil && want(resp)
	}
	for _, w := range []struct {
		name  string
		write func(ctx context.Context) error
		done  func(*clientv3.GetResponse) bool
	}{
		{"Update", func(ctx context.Context) error {
			return r.Update(ctx, func(in *registry.Record) { in.Metadata = map[string]string{"zone": "b"} })
		}, func(resp *clientv3.GetResponse) bool {
			if len(resp.Kvs) != 1 {
				return false
			}
			in, err := registry.Unmarshal(resp.Kvs[0].Value)
			return err == nil && in.Metadata["zone"] == "b"
		}},
		{"Deregister", r.Deregister, func(resp *clientv3.GetResponse) bool { return len(resp.Kvs) == 0 }},
		{"Register", r.Register, func(resp *clientv3.GetResponse) bool { return len(resp.Kvs) == 1 }},
	} {
		leader := c.WaitLeader(t)
		c.Stop(leader)
		killed := time.Now()
		err := w.write(context.Background())
		took := time.Since(killed)
		t.Logf("%s right after the leader (m%d) was killed took %v: %v", w.name, leader, took.Round(time.Millisecond), err)
		if err != nil {
			t.Fatalf("%s right after a leader kill: %v after %v; want it done once a new leader takes it", w.name, err, took.Round(time.Millisecond))
		}
		// How long it took (about 0.5 s: one dropped attempt, 0.16–2.6 s seen under an
		// oversubscribed CPU) is logged, not asserted; lifecycle's BenchmarkDrainAfterLeaderKill
		// measures the same attempts in a drain's Deregister.
		if !recordHas(w.done) {
			t.Fatalf("after %s etcd does not hold what it wrote", w.name)
		}
		if err := c.Restart(leader); err != nil {
			t.Fatal(err)
		}
	}
}
