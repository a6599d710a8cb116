// Package switchyard makes releases of gRPC microservices lossless.
//
// During a rolling, blue/green or canary release no request fails, no request that entered
// new code meets old code further down the chain, no message or scheduled job runs on a node
// being drained, and a new instance takes traffic only once it is ready, then gradually.
// A service imports the packages it needs and wires a few options in main; etcd is the one
// piece of infrastructure switchyard needs.
//
// The packages, each implementing a part of DESIGN.md:
//
//   - registry: instances in etcd (lease, delayed and readiness-gated registration,
//     deregistration, re-registration after an outage), watch-based discovery, and the gRPC
//     resolver for switchyard:///<app> targets.
//
//   - traffic: release channels and their rules, the weight formula, the rule client with
//     its events (OnStart, OnFlowChange, OnEnterAllGreen …), the controller that writes
//     rules, and sticky blue/green decisions carried in OpenTelemetry baggage.
//
//   - balancer: the gRPC policy switchyard_weighted (selected by the resolver by default):
//     weights, warmup ramp, blue/green filter for sticky requests, offline marks.
//
//   - lifecycle: an instance's lossless start, drain and offline, its admin HTTP server
//     (probes, the preStop /offline), and the wiring of all of the above for a service's main.
//
//   - mq: color-tagging producers and consumer groups that leave a drained color, with
//     adapters for NATS JetStream (mq/natsjs) and Kafka (mq/kafka).
//
//   - job: sharded scheduled jobs coordinated on etcd that never run on a drained executor.
//
// examples/bluegreen runs a whole release under load and shows it lossless; cmd/switchyard
// is the operator CLI (channels, instances, watch).
//
// This package itself holds no code.
package switchyard
