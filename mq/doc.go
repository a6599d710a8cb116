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
// A Consumer follows its ConsumerConfig.Drains (deploy.Drains): its instance's color, which
// colors of its app are drained and when that changes. In a service that is the
// lifecycle.Instance, which reads them from the app's traffic rule; the Consumer is built
// with it and handed to its Append, and is then started once the instance is registered and
// stopped, after its messages in flight, while the instance drains. Between the two it joins
// or leaves groups at every change of the drains, from a goroutine of its own. A stopping
// group member finishes and acknowledges the call in progress, hands back what it fetched
// but has not started, and the member taking over continues from there. Without lifecycle,
// deploy.ManualDrains sets the drains by hand; with no Drains the consumer is colorless.
// Package mq imports neither etcd nor gRPC.
//
// # Stop contract
//
// Consumer.Stop and every adapter's Subscription.Stop keep one contract, which the other
// components of switchyard that stop (lifecycle's, job's) refer to:
//
//   - In-progress handler calls finish, with a live ctx, or their ctx is cancelled at Stop's
//     ctx deadline, not before. Work not started is not started: it is handed back (NAK or
//     left uncommitted) for another member to take at once.
//   - Stop returns by its ctx deadline: nil when everything in progress finished and was
//     acknowledged, else an error wrapping ctx's.
//   - Nothing leaks: once the handlers have returned, no goroutine, connection or group
//     membership of the stopped component is left (what Stop had to leave to the background
//     at its deadline, such as closing a client, ends within about a second). A handler must
//     return once its ctx is cancelled; until it does, its goroutine stays.
//
// A call cut at the deadline is not acknowledged, so its message is delivered again (handlers
// are idempotent). mqtest.TestStopContract checks this for each adapter.
//
// # Drain
//
// On a drain the consumers of the drained color leave their groups together, hand back what
// they fetched and had not started, and handle nothing later than the calls in progress.
// In mqtest.TestIsolationAcrossADrain (both adapters) no message is handled by the drained
// color later than mqtest.DrainGrace (300 ms) after the drain is set, and none is lost. NATS
// JetStream members fetch few messages ahead (natsjs.Options.PullBatch, default 16) and NAK
// the rest at once on Stop; before, a member fetched up to 500 and handled them all while
// stopping (469 messages handled by blue later than the grace, the last 2.8 s after the
// drain, in that test).
//
// Handlers must be idempotent: around a switch, a message that was in flight on a stopping
// member can be delivered again to the one taking over. Consumer.Redeliveries counts those the
// broker reports (JetStream does; Kafka cannot tell). In the conformance tests (mq/mqtest:
// 2 blue and 2 green instances, 3,000 messages, blue drained while a blue handler is busy and
// undrained in the middle) both adapters handled every message exactly once.
//
// # Metrics and work
//
// A Consumer counts, on ConsumerConfig.MeterProvider (default otel.GetMeterProvider();
// instrumentation scope github.com/switchyard-go/switchyard/mq), the messages its handler ran:
//
//	switchyard.mq.messages  Int64Counter {message}
//	    switchyard.group          the logical group G (not G-blue or G-green)
//	    switchyard.color          the consuming instance's color ("" colorless)
//	    switchyard.message_color  the message's tag as the groups read it: "blue", "green",
//	                              or "" (untagged, or tagged with neither color)
//	    switchyard.outcome        "ok", or "error" when the handler returned an error
//
// Messages a group acknowledges without running the handler (the other colors') are not
// counted; a redelivered message counts each time the handler runs it. The attribute sets are
// built once, in NewConsumer. When ConsumerConfig.Drains also implements deploy.Worker (as
// lifecycle's Instance does), the Consumer tells it of each message the handler ran:
// DidWork(deploy.MessageWork, failed), so the instance's signals (its /stats window, the
// dashboard) show the mq work per color.
//
// Cost: the origin group receives and acknowledges every colored message, and the colored
// group every untagged one, so the broker delivers each message to a colored instance twice.
// Measured (BenchmarkConsume in each adapter, 2 cores): a blue consumer handles 0.67 × the
// messages/s of one plain JetStream durable consumer, and 0.66 × those of one plain franz-go
// group.
package mq
