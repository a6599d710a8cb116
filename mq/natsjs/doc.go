// Package natsjs is the NATS JetStream adapter of package mq (github.com/nats-io/nats.go,
// jetstream API): a topic is a stream with one subject, a consumer group is a durable pull
// consumer shared by its members, and every group receives every message of the stream.
// Acknowledgements wait for the server (DoubleAck), so a member that stops hands over exactly
// what it has not finished. Tested against a real nats-server run in process
// (package natstest, which examples and your tests can use too), including a server restart.
//
// What a member holds is bounded: it fetches at most Options.PullBatch messages (default 16)
// ahead of its handler, and a group has at most Options.MaxAckPending (default 256)
// unacknowledged. On Stop (a drain, a shutdown) a member NAKs without delay every fetched
// message it has not started, so another member — of the other color after a drain — gets
// it at once instead of after AckWait, and lets the call in progress finish and acknowledge
// (package mq's Stop contract).
//
//	nc, _ := nats.Connect(url, nats.MaxReconnects(-1))
//	broker, _ := natsjs.New(nc, natsjs.Options{})
//	inst, _ := lifecycle.New(lifecycle.Config{...})
//	consumer, _ := mq.NewConsumer(mq.ConsumerConfig{Broker: broker, Topic: "orders.created",
//		Group: "billing", Drains: inst, Handler: handle})
//	inst.Append(consumer)
//
// The package is a module of its own, github.com/switchyard-go/switchyard/mq/natsjs: only its
// users have nats.go and nats-server in their module graph. Get it besides the root
// module (README, "Modules").
package natsjs
