package natsjs_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/natsjs"
	"github.com/switchyard-go/switchyard/mq/natsjs/natstest"
)

// A blue instance's consumer of logical group "billing" on JetStream handles untagged and
// blue messages and leaves green ones to green instances; while green is drained it handles
// green's too, and once blue is drained it leaves every group. The drains are set by hand
// here (deploy.ManualDrains); in a service, pass the lifecycle.Instance as Drains and add the
// consumer with its Append.
func Example() {
	s, err := natstest.New() // in process; in production, your NATS cluster
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	broker, err := natsjs.New(nc, natsjs.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}

	ctx := context.Background()
	for _, m := range []struct {
		color deploy.Color
		value string
	}{{deploy.Blue, "order 1"}, {deploy.Green, "order 2"}, {deploy.None, "order 3"}} {
		if err := mq.NewProducer(broker, m.color).Publish(ctx, "orders.created", mq.Message{Value: []byte(m.value)}); err != nil {
			fmt.Println(err)
			return
		}
	}

	drains := deploy.NewManualDrains(deploy.Blue)
	handled := make(chan string, 3)
	c, err := mq.NewConsumer(mq.ConsumerConfig{
		Broker: broker, Topic: "orders.created", Group: "billing", Drains: drains,
		Logger: slog.New(slog.DiscardHandler),
		Handler: func(_ context.Context, m mq.Message) error {
			handled <- fmt.Sprintf("%s (tag %q)", m.Value, m.Color())
			return nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := c.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer c.Stop(ctx)
	fmt.Println("groups:", c.Groups())
	fmt.Println("handled:", receive(handled, 2))

	drains.Set(deploy.Drain{Green: true})
	waitGroups(c, 3)
	fmt.Println("green drained, groups:", c.Groups())
	fmt.Println("handled:", receive(handled, 1))

	drains.Set(deploy.Drain{Blue: true})
	waitGroups(c, 0)
	fmt.Println("blue drained, groups:", c.Groups())
	// Output:
	// groups: [billing billing-blue]
	// handled: [order 1 (tag "blue") order 3 (tag "")]
	// green drained, groups: [billing billing-blue billing-green]
	// handled: [order 2 (tag "green")]
	// blue drained, groups: []
}

// receive returns n values of ch, sorted (the groups of a consumer handle concurrently).
func receive(ch <-chan string, n int) []string {
	var got []string
	timeout := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case v := <-ch:
			got = append(got, v)
		case <-timeout:
			return append(got, "timed out")
		}
	}
	slices.Sort(got)
	return got
}

// waitGroups waits until c is in n groups: it follows its drains from a goroutine of its own.
func waitGroups(c *mq.Consumer, n int) {
	for deadline := time.Now().Add(10 * time.Second); len(c.Groups()) != n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}
