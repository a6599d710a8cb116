// Package kafka is the Kafka adapter of package mq, on github.com/twmb/franz-go: a consumer
// group is a Kafka consumer group, and each of G, G-blue and G-green reads the whole topic.
// Offsets are committed only after the handler returned nil, so a stopping member hands over
// exactly where it stopped. On Stop a member stops polling, leaves the records it fetched
// but did not start uncommitted for the next owner, lets the call in progress finish with a
// live ctx and commits it; if Stop's ctx ends first, it cancels that call's ctx, and still
// leaves the group and closes its client (package mq's Stop contract). Tested against
// franz-go's in-process Kafka-protocol cluster (kfake), and against a real cluster when
// SWITCHYARD_KAFKA_BROKERS is set.
//
//	broker, _ := kafka.New([]string{"kafka-0:9092"})
//	inst, _ := lifecycle.New(lifecycle.Config{...})
//	consumer, _ := mq.NewConsumer(mq.ConsumerConfig{Broker: broker, Topic: "orders.created",
//		Group: "billing", Drains: inst, Handler: handle})
//	inst.Append(consumer)
//
// The package is a module of its own, github.com/switchyard-go/switchyard/mq/kafka: only its
// users have franz-go (and, for its tests, kfake) in their module graph. Get it besides the root
// module (README, "Modules").
package kafka
