package mq_test

import (
	"context"
	"fmt"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/mq"
)

// A blue instance's consumer of logical group "billing" joins the origin group and its
// color's; it handles untagged and blue messages, and leaves green ones to green instances.
// (The broker here is the in-memory test double; use mq/natsjs or mq/kafka. The drains are
// set by hand; in a service, pass the lifecycle.Instance.)
func Example() {
	broker := newMemBroker()
	c, _ := mq.NewConsumer(mq.ConsumerConfig{
		Broker: broker, Topic: "orders.created", Group: "billing", Logger: silent,
		Drains: deploy.NewManualDrains(deploy.Blue),
		Handler: func(_ context.Context, m mq.Message) error {
			fmt.Printf("handled %s (tag %q)\n", m.Value, m.Color())
			return nil
		},
	})
	_ = c.Start(context.Background())
	defer c.Stop(context.Background())
	fmt.Println("groups:", c.Groups())

	ctx := context.Background()
	_ = mq.NewProducer(broker, deploy.Blue).Publish(ctx, "orders.created", mq.Message{Value: []byte("order 1")})
	_ = mq.NewProducer(broker, deploy.Green).Publish(ctx, "orders.created", mq.Message{Value: []byte("order 2")})
	_ = mq.NewProducer(broker, deploy.None).Publish(ctx, "orders.created", mq.Message{Value: []byte("order 3")})
	// Output:
	// groups: [billing billing-blue]
	// handled order 1 (tag "blue")
	// handled order 3 (tag "")
}
