package registry_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// liveHeap is the heap in use after two collections: what is still reachable.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// heapPerEndpoint builds a resolver with build, waits for its first state of n endpoints
// and returns the heap it keeps (its own state and the state gRPC holds) per endpoint.
func heapPerEndpoint(b *testing.B, n int, build func(cc *stubCC) resolver.Resolver) float64 {
	b.Helper()
	cc := newStubCC()
	before := liveHeap()
	r := build(cc)
	s := nextState(b, cc)
	if len(s.Endpoints) != n {
		b.Fatalf("first state has %d endpoints, want %d", len(s.Endpoints), n)
	}
	after := liveHeap()
	runtime.KeepAlive(s)
	r.Close()
	return (float64(after) - float64(before)) / float64(n)
}

// BenchmarkResolverMemory reports the heap a resolver keeps per endpoint (B/endpoint) once it
// has handed gRPC a state of n instances, beside etcd's own naming resolver
// (etcd-naming-B/endpoint) over the same number of endpoints in the same run. Run with
// -benchtime=1x: the figure does not depend on b.N.
func BenchmarkResolverMemory(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			cli := populated(b, n)
			etcdCli := populatedNaming(b, n)
			bld, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(b)})
			if err != nil {
				b.Fatal(err)
			}
			ebld, err := etcdresolver.NewBuilder(etcdCli)
			if err != nil {
				b.Fatal(err)
			}
			var ours, theirs float64
			for i := 0; i < b.N; i++ {
				ours = heapPerEndpoint(b, n, func(cc *stubCC) resolver.Resolver {
					r, err := bld.Build(resolver.Target{URL: *mustParse(b, "switchyard:///bench")}, cc, resolver.BuildOptions{})
					if err != nil {
						b.Fatal(err)
					}
					return r
				})
				theirs = heapPerEndpoint(b, n, func(cc *stubCC) resolver.Resolver {
					r, err := ebld.Build(resolver.Target{URL: *mustParse(b, "etcd:///bench")}, cc, resolver.BuildOptions{})
					if err != nil {
						b.Fatal(err)
					}
					return r
				})
			}
			b.ReportMetric(ours, "B/endpoint")
			b.ReportMetric(theirs, "etcd-naming-B/endpoint")
		})
	}
}

// populatedNaming starts etcd holding n endpoints of target "bench" written by etcd's
// endpoints manager, with the addresses populated gives its instances, and returns a client.
func populatedNaming(b *testing.B, n int) *clientv3.Client {
	b.Helper()
	cli := etcdtest.Start(b).Client(b)
	em, err := endpoints.NewManager(cli, "bench")
	if err != nil {
		b.Fatal(err)
	}
	var ups []*endpoints.UpdateWithOpts
	for i := 0; i < n; i++ {
		ups = append(ups, endpoints.NewAddUpdateOpts(fmt.Sprintf("bench/i-%05d", i),
			endpoints.Endpoint{Addr: fmt.Sprintf("10.0.%d.%d:9000", i/250, i%250+1)}))
		if len(ups) == 100 || i == n-1 {
			if err := em.Update(context.Background(), ups); err != nil {
				b.Fatal(err)
			}
			ups = ups[:0]
		}
	}
	return cli
}
