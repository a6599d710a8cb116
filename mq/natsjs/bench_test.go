package natsjs_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/natsjs"
	"github.com/switchyard-go/switchyard/mq/natsjs/natstest"
)

// BenchmarkConsume: b.N blue messages consumed by one plain JetStream durable consumer (the
// adapter's Subscribe: same library, same consumer settings and ack, no switchyard groups), and
// by a blue mq.Consumer (groups billing and billing-blue: the origin group receives and
// acknowledges every message without handling it). msgs/s is the figure to compare.
func BenchmarkConsume(b *testing.B) {
	s := natstest.Start(b)
	nc := s.Connect(b)
	brk, err := natsjs.New(nc, natsjs.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	publish := func(topic string, n int) {
		p := mq.NewProducer(brk, deploy.Blue)
		for k := 0; k < n; k++ {
			if err := p.Publish(ctx, topic, mq.Message{Value: []byte("x")}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("plain-durable", func(b *testing.B) {
		topic := fmt.Sprintf("benchplain%d", b.N)
		publish(topic, b.N)
		var n atomic.Int64
		done := make(chan struct{})
		b.ResetTimer()
		sub, err := brk.Subscribe(ctx, topic, "plain", func(context.Context, mq.Message) error {
			if n.Add(1) == int64(b.N) {
				close(done)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		<-done
		b.StopTimer()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = sub.Stop(sctx)
		cancel()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("colored-group", func(b *testing.B) {
		topic := fmt.Sprintf("benchcolored%d", b.N)
		publish(topic, b.N)
		var n atomic.Int64
		done := make(chan struct{})
		c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: brk, Topic: topic, Group: "billing", Drains: deploy.NewManualDrains(deploy.Blue),
			Logger: testutil.Silent,
			Handler: func(context.Context, mq.Message) error {
				if n.Add(1) == int64(b.N) {
					close(done)
				}
				return nil
			}})
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		if err := c.Start(ctx); err != nil {
			b.Fatal(err)
		}
		<-done
		b.StopTimer()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_ = c.Stop(sctx)
		cancel()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
