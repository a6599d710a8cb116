package balancer_test

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"testing"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/traffic"
)

// BenchmarkSplitAccuracy makes b.N calls at each blue percent, through the registry, the
// resolver and the balancer, and reports blue's share of them (blue-%) and its distance from
// the percent (error-pp). The tests prove the split at picker level; this is the statistical
// version over many calls:
//
//	go test -run '^$' -bench SplitAccuracy -benchtime 20000x ./balancer/
func BenchmarkSplitAccuracy(b *testing.B) {
	c := newCluster(b)
	blue := c.start(colored("blue-1", deploy.Blue, 50))
	green := c.start(colored("green-1", deploy.Green, 50))
	client := c.dial()
	client.waitReady(context.Background(), "blue-1", "green-1")
	for _, p := range []float64{1, 10, 50, 99} {
		setBluePercent(b, p, blue, green)
		bw, gw := traffic.Weights(p)
		client.waitRecord(fmt.Sprint("blue ", p, "%"), func(in map[string]balancer.EndpointInfo) bool {
			return in["blue-1"].TrafficWeight == bw && in["green-1"].TrafficWeight == gw
		})
		b.Run(fmt.Sprintf("blue=%v%%", p), func(b *testing.B) {
			var n, nBlue atomic.Int64
			b.SetParallelism(4) // 4 × GOMAXPROCS callers
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{})
					if err != nil {
						b.Error(err)
						return
					}
					n.Add(1)
					if resp.GetInstance() == "blue-1" {
						nBlue.Add(1)
					}
				}
			})
			share := 100 * float64(nBlue.Load()) / float64(n.Load())
			b.ReportMetric(share, "blue-%")
			b.ReportMetric(math.Abs(share-p), "error-pp")
		})
	}
}
