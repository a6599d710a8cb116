package registry_test

import (
	"context"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// unreachableAddr is a loopback address nothing listens on.
func unreachableAddr(t testing.TB) string {
	ln := testutil.Listen(t)
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func hasAll(want ...string) func([]registry.Record) bool {
	return func(in []registry.Record) bool {
		got := ids(in)
		for _, id := range want {
			if !slices.Contains(got, id) {
				return false
			}
		}
		return true
	}
}

// Issue 12 case 1: providers and/or consumers cut off from etcd for longer than the lease TTL;
// the leases expire while every instance still serves. The consumer must not drop them, and
// no call may fail, during the partition or after it heals.
func TestAPartitionLongerThanTheTTLLosesNoCalls(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		consumerCut bool
	}{{"providers cut", false}, {"providers and consumer cut", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := etcdtest.Start(t)
			direct := e.DirectClient(t)
			kaCli, _ := keepAliveClient(t, e) // the providers' link to etcd, through the proxy
			logs := map[string]*stateLog{}
			var regs []*registry.Registrar
			for _, id := range []string{"g-1", "g-2"} {
				l := &stateLog{}
				logs[id] = l
				addr, _ := testutil.ServeGreeter(t, id)
				regs = append(regs, register(t, kaCli, "greeter", id, addr, shortTTL, func(c *registry.Config) { c.OnStateChange = l.add }))
			}
			consumerCli := direct
			if tc.consumerCut {
				consumerCli = e.Client(t)
			}
			c := dial(t, consumerCli, "greeter")
			cl := startCaller(t, c)
			cl.waitCalls(t, nil, 20, "g-1", "g-2")

			e.Cut()
			for _, r := range regs {
				testutil.Eventually(t, r.Key()+"'s lease to expire", func() bool {
					_, _, ok := storedRecord(t, direct, r.Key())
					return !ok
				})
			}
			// A marker registered after the deletions: once the consumer has it, it has seen
			// them. It serves nothing, so it takes no call.
			// Green, so that it does not count as a blue instance left.
			register(t, direct, "greeter", "m", unreachableAddr(t), func(c *registry.Config) { c.Instance.Color = deploy.Green })
			// The first lease to expire may take its instance away (another blue one is still
			// there); the last blue one is held.
			kept := func(in []registry.Record) []string {
				var out []string
				for _, id := range ids(in) {
					if id == "g-1" || id == "g-2" {
						out = append(out, id)
					}
				}
				return out
			}
			if !tc.consumerCut {
				got := c.resolved(t, "the marker", hasAll("m"))
				if k := kept(got); len(k) == 0 {
					t.Errorf("while the providers are cut off, after their leases expired, the consumer's table is %v; want g-1 or g-2 kept (they still serve)", ids(got))
				} else {
					cl.waitCalls(t, cl.counts(), 20, k...)
				}
			}
			e.Heal()
			if tc.consumerCut {
				if got := c.resolved(t, "the marker", hasAll("m")); len(kept(got)) == 0 {
					t.Errorf("after the partition healed the consumer's table is %v; want g-1 or g-2 kept (they still serve)", ids(got))
				}
			}
			for id, l := range logs {
				testutil.Eventually(t, id+" to register again", func() bool {
					return l.saw(registry.StateRegistered, registry.StateLost, registry.StateRegistered)
				})
			}
			c.resolved(t, "g-1 and g-2 registered again", func(in []registry.Record) bool {
				return hasAll("g-1", "g-2", "m")(in)
			})
			cl.waitCalls(t, cl.counts(), 20, "g-1", "g-2")
			cl.halt()
			if f := cl.failed(); len(f) != 0 {
				t.Fatalf("%d of %d calls failed, first: %v", len(f), len(f)+sum(cl.counts()), f[0])
			}
		})
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// The other way: a record deleted on purpose (Deregister, which keeps its lease) leaves the
// table at once, even if that takes most of the app away, and so does one whose color has
// other instances left; the lease of the last instance of a color expiring is held only
// until the hold ends.
func TestDeregisteredInstancesLeaveAtOnceAndExpiredOnesAfterTheHold(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rec := watch(t, cli, "order", func(c *registry.WatcherConfig) { c.HoldExpired = 300 * time.Millisecond })
	var regs []*registry.Registrar
	for _, id := range []string{"o-1", "o-2", "o-3"} {
		regs = append(regs, register(t, cli, "order", id, "127.0.0.1:900"+id[2:]))
	}
	rec.waitFor(t, "three instances", hasIDs("o-1", "o-2", "o-3"))
	for _, r := range regs[1:] {
		if err := r.Deregister(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	rec.waitFor(t, "o-2 and o-3 gone at once", hasIDs("o-1"))
	if u := rec.w.Last(); len(u.Held) != 0 {
		t.Fatalf("deregistered instances held: %v", u.Held)
	}

	// x-1 crashes: its lease is revoked without Deregister (what an expiry does). It is
	// held, then dropped when the hold ends.
	x1 := putWithLease(t, cli, "order", "x-1")
	rec.waitFor(t, "x-1", hasIDs("o-1", "x-1"))
	if _, err := cli.Revoke(context.Background(), x1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "x-1 held", func() bool {
		u := rec.w.Last()
		return slices.Equal(u.Held, []string{"x-1"}) && hasIDs("o-1", "x-1")(u.Instances)
	})
	rec.waitFor(t, "x-1 dropped after the hold", hasIDs("o-1"))

	// When every record vanishes with its lease, the set never empties: they are held past
	// the hold until an instance registers again.
	x2 := putWithLease(t, cli, "order", "x-2")
	if err := regs[0].Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "only x-2", hasIDs("x-2"))
	if _, err := cli.Revoke(context.Background(), x2); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "x-2 held", func() bool { return slices.Equal(rec.w.Last().Held, []string{"x-2"}) })
	revoked := time.Now()
	// A check that something does not happen has to wait: twice the hold, from the deletion
	// reaching the Watcher.
	testutil.Eventually(t, "twice the hold to pass", func() bool { return time.Since(revoked) > 600*time.Millisecond })
	if u := rec.w.Last(); !slices.Equal(u.Held, []string{"x-2"}) || !hasIDs("x-2")(u.Instances) {
		t.Fatalf("with no instance left in etcd the set is %v (held %v); want x-2 kept", ids(u.Instances), u.Held)
	}
	putWithLease(t, cli, "order", "x-3")
	rec.waitFor(t, "x-3 in and x-2 dropped, its hold being over", hasIDs("x-3"))
}

// putWithLease writes an instance record under a new lease of its own, without keepalive.
func putWithLease(t testing.TB, cli *clientv3.Client, app, id string) clientv3.LeaseID {
	t.Helper()
	g, err := cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	key := deploy.AppPrefix(deploy.DefaultPrefix, app) + id
	if _, err := cli.Put(context.Background(), key, record(t, app, id, "127.0.0.1:9100"), clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	return g.ID
}
