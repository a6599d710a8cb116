// Package deploy is switchyard's vocabulary: the words every other package shares and
// nothing else. It imports no package of switchyard, etcd or gRPC, so anything may import it
// (grpc's connectivity package plays the same part for gRPC).
//
//   - Color (Blue, Green, None): which half-cluster of an app an instance belongs to.
//   - ValidateName: the rule for app, instance, channel and job names, and its error.
//   - The defaults and wire keys: DefaultPrefix, DefaultWeight, Scheme, OfflineHeader,
//     BaggageKey, ColorHeader (DESIGN.md "etcd key layout", "Stickiness", "Offline
//     notification", "MQ isolation").
//   - The drain seam: Drains tells a component (an mq consumer, a job executor) its
//     instance's color, which colors of its app are drained and when that changes. lifecycle's
//     Instance implements it from the app's rule; ManualDrains is set by hand, for components
//     run without lifecycle and for tests.
package deploy
