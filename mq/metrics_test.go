package mq_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/metrictest"
	"github.com/switchyard-go/switchyard/mq"
)

// A blue consumer counts, on ConsumerConfig.MeterProvider, the messages its handler ran by
// the message's color and outcome (not the green one it skipped), and tells its Drains of
// each one, as they are a deploy.Worker.
func TestMessagesCountedAndReportedToTheDrains(t *testing.T) {
	m := metrictest.New(t)
	drains := metrictest.NewWorkDrains(deploy.Blue)
	b := newMemBroker()
	var g got
	c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Drains: drains, Logger: silent, MeterProvider: m.MP,
		Handler: func(ctx context.Context, m mq.Message) error {
			if string(m.Value) == "fail" {
				return errors.New("refused")
			}
			return g.handler(ctx, m)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })

	publishAll(t, b) // b (blue), g (green), u (untagged), r (tagged red: the origin's)
	err = mq.NewProducer(b, deploy.Blue).Publish(context.Background(), "t", mq.Message{Value: []byte("fail")})
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("publishing the message the handler refuses: %v, want the handler's error (the in-memory broker delivers synchronously)", err)
	}
	if s := g.sorted(); s != "b r u" {
		t.Fatalf("blue handled %q, want \"b r u\"", s)
	}
	const of = "switchyard.color=blue,switchyard.group=G,switchyard.message_color="
	want := map[string]int64{
		of + "blue,switchyard.outcome=ok":    1,
		of + "blue,switchyard.outcome=error": 1,
		of + ",switchyard.outcome=ok":        2,
	}
	if got := m.Sums("switchyard.mq.messages"); !maps.Equal(got, want) {
		t.Errorf("switchyard.mq.messages = %v\nwant %v", got, want)
	}
	if got, want := drains.Done(), map[string]int{"message ok": 3, "message failed": 1}; !maps.Equal(got, want) {
		t.Errorf("the drains were told of %v, want %v", got, want)
	}
}
