// Package mq keeps message consumers off a drained color (DESIGN.md "MQ isolation"). It is
// broker-agnostic: a Broker is implemented by an adapter subpackage (mq/natsjs for NATS
// JetStream, mq/kafka for Kafka), and importing mq pulls in no broker client.
//
// A Producer tags every message with the producing instance's color in the header
// x-deploy-color (untagged when colorless). A Consumer turns one logical group G into three
// groups on the broker — G for untagged messages, G-blue and G-green — each of which receives
// every message of the topic, handles those of its color and acknowledges the rest, so every
// message is handled by exactly the group of its color:
//
//	instance   normal           its color drained   the other color drained
//	blue       G, G-blue        none                G, G-blue, G-green
//	green      G, G-green       none                G, G-green, G-blue
//	colorless  G (everything)
//
// The Consumer is a lifecycle.Component: given to lifecycle.Config.Components, it is handed
// the rule client (UseRules), started once the instance is registered, told of every rule
// event of the app's channel — on which it re-reads the rule and joins or leaves groups — and
// stopped, after its messages in flight, while the instance drains. A stopping group member
// finishes and acknowledges what it has, and the member taking over continues from there.
//
// Handlers must be idempotent: around a switch, a message that was in flight on a stopping
// member can be delivered again to the one taking over. Consumer.Redeliveries counts those the
// broker reports (JetStream does; Kafka cannot tell). In the conformance tests (mq/mqtest:
// 2 blue and 2 green instances, 3,000 messages, blue drained while a blue handler is busy and
// undrained in the middle) both adapters handled every message exactly once.
//
// Cost: the origin group receives and acknowledges every colored message, and the colored
// group every untagged one, so the broker delivers each message to a colored instance twice.
// Measured (BenchmarkConsume in each adapter, 2 cores): a blue consumer handles 0.67 × the
// messages/s of one plain JetStream durable consumer, and 0.66 × those of one plain franz-go
// group.
package mq
