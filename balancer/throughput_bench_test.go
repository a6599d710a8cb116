package balancer_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// BenchmarkThroughput calls the same 4 loopback servers through round_robin and through
// switchyard_weighted, 8 calls in flight; compare the two ns/op (lower is more throughput).
func BenchmarkThroughput(b *testing.B) {
	c := newCluster(b)
	for i := 0; i < 4; i++ {
		c.start(registry.Record{ID: fmt.Sprintf("g-%d", i)})
	}
	clients := map[string]greeterpb.GreeterClient{
		"round_robin":         c.dialWith(func(rc *registry.ResolverConfig) { rc.ServiceConfig = `{"loadBalancingConfig":[{"round_robin":{}}]}` }),
		"switchyard_weighted": c.dialWith(),
	}
	for _, policy := range []string{"round_robin", "switchyard_weighted"} {
		client := clients[policy]
		calls(b, client, context.Background(), 100, 4) // connected
		b.Run("policy="+policy, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4) // 4 × GOMAXPROCS goroutines
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
