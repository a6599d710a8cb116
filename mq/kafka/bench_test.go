package kafka_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/kafka"
)

// BenchmarkConsume: b.N blue records consumed by one plain franz-go consumer group (the
// adapter's Subscribe: same library, same settings, commit after handling, no switchyard
// groups), and by a blue mq.Consumer (groups billing and billing-blue: the origin group reads
// and commits every record without handling it). msgs/s is the figure to compare.
func BenchmarkConsume(b *testing.B) {
	seeds, _, _ := cluster(b)
	brk, err := kafka.New(seeds)
	if err != nil {
		b.Fatal(err)
	}
	defer brk.Close()
	ctx := context.Background()
	publish := func(topic string, n int) {
		p := mq.NewProducer(brk, deploy.Blue)
		for k := 0; k < n; k++ {
			if err := p.Publish(ctx, topic, mq.Message{Value: []byte("x")}); err != nil {
				b.Fatal(err)
			}
		}
	}
	run := 0
	for _, name := range []string{"plain-group", "colored-group"} {
		b.Run(name, func(b *testing.B) {
			run++
			topic := map[string]string{"plain-group": "bench.plain", "colored-group": "bench.colored"}[name]
			group := name + string(rune('a'+run)) // a fresh group each run, reading from the start
			publish(topic, b.N)
			var n atomic.Int64
			done := make(chan struct{})
			handler := func(context.Context, mq.Message) error {
				if n.Add(1) == int64(b.N) {
					close(done)
				}
				return nil
			}
			b.ResetTimer()
			var stop func(context.Context) error
			if name == "plain-group" {
				sub, err := brk.Subscribe(ctx, topic, group, handler)
				if err != nil {
					b.Fatal(err)
				}
				stop = sub.Stop
			} else {
				c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: brk, Topic: topic, Group: group, Drains: deploy.NewManualDrains(deploy.Blue),
					Handler: handler, Logger: testutil.Silent})
				if err != nil {
					b.Fatal(err)
				}
				if err := c.Start(ctx); err != nil {
					b.Fatal(err)
				}
				stop = c.Stop
			}
			<-done
			b.StopTimer()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = stop(sctx)
			cancel()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
