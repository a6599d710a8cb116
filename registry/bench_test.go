package registry_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// populated starts etcd holding n instance records of app "bench", written in transactions
// of 100 puts, and returns a client of it.
func populated(b testing.TB, n int) *clientv3.Client {
	b.Helper()
	cli := etcdtest.Start(b).Client(b)
	const app = "bench"
	var ops []clientv3.Op
	flush := func() {
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := 0; i < n; i++ {
		in := registry.Record{App: app, ID: fmt.Sprintf("i-%05d", i), Addr: fmt.Sprintf("10.0.%d.%d:9000", i/250, i%250+1),
			Color: deploy.Blue, Weight: 100, TrafficWeight: 100, StartTime: time.Now()}
		val, err := registry.Marshal(in)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(deploy.InstanceKey(deploy.DefaultPrefix, in.App, in.ID), string(val)))
		if len(ops) == 100 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
	return cli
}

func nextState(b testing.TB, cc *stubCC) resolver.State {
	b.Helper()
	return testutil.Receive(b, "a resolver state", cc.states)
}

// BenchmarkResolverUpdate measures one instance's record changing in etcd until gRPC holds
// the new resolver state: etcd put, watch event, decode, rebuilding the sorted set and the
// endpoint list (unchanged endpoints are reused). Allocations include etcd's client.
func BenchmarkResolverUpdate(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			cli := populated(b, n)
			cc := newStubCC()
			buildResolver(b, cli, "bench", cc)
			if s := nextState(b, cc); len(s.Endpoints) != n {
				b.Fatalf("first state has %d endpoints, want %d", len(s.Endpoints), n)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				in := registry.Record{App: "bench", ID: fmt.Sprintf("i-%05d", i%n), Addr: fmt.Sprintf("10.0.%d.%d:9000", (i%n)/250, (i%n)%250+1),
					Weight: float64(i + 1), TrafficWeight: 100} // always a real change
				val, _ := registry.Marshal(in)
				if _, err := cli.Put(context.Background(), deploy.InstanceKey(deploy.DefaultPrefix, in.App, in.ID), string(val)); err != nil {
					b.Fatal(err)
				}
				if s := nextState(b, cc); len(s.Endpoints) != n {
					b.Fatalf("state has %d endpoints, want %d", len(s.Endpoints), n)
				}
			}
		})
	}
}

// BenchmarkResolverInitialList measures a new ClientConn's resolver listing n instances
// until gRPC holds the first state.
func BenchmarkResolverInitialList(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			cli := populated(b, n)
			bld, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(b)})
			if err != nil {
				b.Fatal(err)
			}
			target := resolver.Target{URL: *mustParse(b, "switchyard:///bench")}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cc := newStubCC()
				r, err := bld.Build(target, cc, resolver.BuildOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if s := nextState(b, cc); len(s.Endpoints) != n {
					b.Fatalf("state has %d endpoints, want %d", len(s.Endpoints), n)
				}
				r.Close()
			}
		})
	}
}

// BenchmarkEtcdNamingResolverUpdate is the same measurement for what users have today: etcd's
// own naming/resolver (etcd:///<target>), which carries no weights or record. Run it beside
// BenchmarkResolverUpdate to compare.
func BenchmarkEtcdNamingResolverUpdate(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			cli := etcdtest.Start(b).Client(b)
			em, err := endpoints.NewManager(cli, "bench")
			if err != nil {
				b.Fatal(err)
			}
			addr := func(i int) string { return fmt.Sprintf("10.0.%d.%d:9000", i/250, i%250+1) }
			var ups []*endpoints.UpdateWithOpts
			for i := 0; i < n; i++ {
				ups = append(ups, endpoints.NewAddUpdateOpts(fmt.Sprintf("bench/i-%05d", i), endpoints.Endpoint{Addr: addr(i)}))
				if len(ups) == 100 || i == n-1 {
					if err := em.Update(context.Background(), ups); err != nil {
						b.Fatal(err)
					}
					ups = ups[:0]
				}
			}
			bld, err := etcdresolver.NewBuilder(cli)
			if err != nil {
				b.Fatal(err)
			}
			cc := newStubCC()
			r, err := bld.Build(resolver.Target{URL: *mustParse(b, "etcd:///bench")}, cc, resolver.BuildOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			if s := nextState(b, cc); len(s.Endpoints) != n {
				b.Fatalf("first state has %d endpoints, want %d", len(s.Endpoints), n)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ep := endpoints.Endpoint{Addr: addr(i % n), Metadata: map[string]any{"weight": i + 1}} // always a real change
				if err := em.AddEndpoint(context.Background(), fmt.Sprintf("bench/i-%05d", i%n), ep); err != nil {
					b.Fatal(err)
				}
				if s := nextState(b, cc); len(s.Endpoints) != n {
					b.Fatalf("state has %d endpoints, want %d", len(s.Endpoints), n)
				}
			}
		})
	}
}
