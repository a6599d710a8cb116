// Package traffic holds release channels and their traffic rules: the rule model and its
// validation, the weight formula, the rule Client every instance embeds (in-memory reads and
// ordered events), the Controller that operators and release tooling use to write rules, and
// sticky blue/green decisions carried in OpenTelemetry baggage. It implements DESIGN.md "Rule
// record", "The weight formula", "Events" and "Stickiness".
//
// # Rules and weights
//
// A channel's rule lives at <prefix>/channels/<channel> (default prefix "/switchyard"): the
// apps released together, whether a release is open, and blue's share of traffic in [0, 100]
// (fractions allowed: 0.1 is a 0.1 % canary). Weights turns the share into per-instance color
// weights with base 100 so that W/(100+W) = percent/100; TrafficWeight is what an instance of
// a given color writes into its registry record.
//
// # The rule Client and its events
//
// NewClient loads every rule once (failing clearly if etcd cannot be read) and then follows
// etcd's watch; Rule, ChannelOf and Rules are lock-free in-memory reads. Subscribe delivers a
// channel's events in order — OnStart when a release opens; OnFlowChange(old, new) when the
// effective blue percent changes, followed by the drain transitions it crosses
// (OnExitAllBlue, OnExitAllGreen, OnEnterAllBlue, OnEnterAllGreen); OnFinish when it closes —
// each subscriber from its own goroutine, so a slow or panicking subscriber holds up no one. A
// new subscriber first gets the events that lead to the current state. While the watch lasts
// every change gets its events; after etcd was unreachable or history was compacted, the
// Client re-reads and emits the events of the net change, so every subscriber converges to
// etcd. A malformed rule is skipped, logged and counted (switchyard.traffic.rules.skipped) and
// the last good rule of its channel stays in force.
//
// # Rules that cannot be read
//
// A rule key whose value cannot be read (not JSON, a schema version this reader does not know
// such as "v":2 from a newer tool, or an invalid rule) is never treated as absent. Unreadable
// lists every such key; UnreadableFor(app) the ones that may decide app's traffic and that
// the Client has no last good version of — a process that started after the key went bad.
// Which apps a key may decide is read leniently from the value's "apps" field alone, so a
// "v":2 record of other apps holds no one up; a value whose apps cannot be read at all may
// name any app and so counts for every app, except one already in an open channel the
// Client can read (an app is in at most one open channel, so that key cannot be the one
// that decides its weight). Failing closed for every app on plain garbage is deliberate:
// the alternative is guessing that a drained color is not drained. Such a key is logged at
// Error level naming the key, the apps and what to do; repairing or deleting the key clears
// it (Updated is closed at every change, so a waiter needs no polling). lifecycle does not
// register an instance while UnreadableFor its app is not empty. ChannelOf and Rule report
// only rules that were read.
//
// The effective percent is BluePercent while a release is open and 50 otherwise, so finishing
// a release from 100 gives OnFlowChange 100→50, OnExitAllBlue, OnFinish. DESIGN.md says
// "exactly one of" the drain events accompanies a flow change; a jump straight from 100 to 0
// (or back) crosses two, and both are delivered, exit first.
//
// # The Controller
//
// Open, Shift and Finish validate first and then write with a compare-and-swap covering every
// rule, so a concurrent change by another operator fails with ErrConflict instead of being
// overwritten, and "an app is in at most one open channel" holds even when two operators open
// channels at once. Finish sets the split back to 50/50.
//
// A rule key that cannot be read holds up only what it may decide: Shift, Finish and Get of
// other channels proceed; Open refuses apps the key may name (any app if its apps cannot be
// read), with an error naming the key; any operation on the key's own channel refuses, naming
// it. Scan returns readable rules and unreadable keys apart; List stays strict. Delete removes
// a broken key or a closed rule, and an open release only with force (that ends the release at
// once and takes its apps out of the channel); it is a compare-and-swap on the key's revision.
//
// # Controller calls and etcd: attempts, lost answers, write ids
//
// A Controller call takes at most its ctx's time, or RequestTimeout when ctx has no deadline.
// Within it every etcd request is an attempt with its own short deadline — 500 ms, doubling up
// to RequestTimeout — sent with WithRequireLeader, and an attempt that etcd does not answer (a
// leader killed with the request in flight, a member that lost its leader, a broken
// connection) is made again after a short backoff (50 ms doubling to 500 ms, jittered). So a
// leader change costs a call about one attempt, not the whole timeout: with a 3-member
// cluster and the leader killed 0–0.6 ms after a Shift or Finish was sent, 74 of 74 calls
// reported done, correctly, in p50 80 ms, p90 0.92 s, max 1.17 s; the controller before this
// reported 19 of 72 applied writes as failed ("etcd unavailable") and waited out the 5 s
// timeout in 9 (TestLeaderKillsDuringWrites, -traffic.leaderkills 60).
//
// Every write carries a write id, Rule.Op: 64 random bits in hex, new for each Open, Shift or
// Finish call and the same in all of its attempts. A write whose answer was lost is sent
// again unchanged; being a compare-and-swap against the read it was decided on, it is applied
// at most once, and when the swap fails the same transaction reads the key, so that the call
// can tell what happened:
//
//   - the rule carries the call's id: an earlier attempt was applied, and the call returns that
//     rule, done;
//   - the key changed since the read and its first change in etcd's history is the call's own
//     write: done (another write came after it);
//   - another write changed the key first: this call's write was not applied, and the error is
//     an *OtherWriteError naming that write's reason and time and wrapping the answer against
//     the rule as it is now — ErrNotOpen ("the release was finished by another write (reason:
//     "rollback by ann", at …)"), ErrAlreadyOpen, ErrUnknownChannel or ErrConflict — so
//     "someone else finished it" is never confused with "my Finish was applied";
//   - the key is as read and another rule changed: ErrConflict, as for any call.
//
// A call whose time runs out while etcd answers no attempt fails with an error that wraps
// ErrEtcdUnavailable and says what was tried and for how long: "nothing was written" if the
// write was never sent, otherwise "it may have been applied", wrapping ErrOutcomeUnknown too,
// with how to check. A Delete carries no id: one whose answer was lost and that finds the key
// it read deleted reports done (another Delete of the same version at the same moment is not
// told apart). Get, List and Scan retry their read the same way.
//
// # Stickiness
//
// Once a request enters a channel's release, every hop below it stays on the same color: the
// client interceptors (UnaryClientInterceptor, StreamClientInterceptor) decide blue with
// probability percent/100 on the first call into the channel and record the decision in the
// baggage member x-deploy-channel-type (e.g. "trade=blue&pay=green"); later hops keep it. They
// write the `baggage` header exactly once, with or without an OpenTelemetry propagator or
// otelgrpc. The server interceptors put every incoming `baggage` header (merged) into the
// handler's context, so a handler that calls on with its own context carries the decision.
// Decision reads it without allocating.
//
// Traffic gives an app's open channel and both color weights (Weights of the rule's
// percent); the Client implements registry.Rules with it and Updated, so a resolver given the
// Client as registry.ResolverConfig.Rules weighs endpoints by the rule itself as soon as the
// Client sees it, without waiting for each instance to re-put its record.
//
// # Baggage limits
//
// On the wire, baggage keeps the W3C limits (MaxBaggageMembers 64 members, MaxBaggageBytes
// 8192 bytes, MaxBaggageMemberBytes 4096 bytes a member, counted as OpenTelemetry writes
// them), and the decision member has priority over every other. The server interceptors read
// all the `baggage` headers of a request as one list (after what otelgrpc extracted): a
// member OpenTelemetry would reject or of more than 4096 bytes is skipped, the last legal
// decision member is kept, and the other members are taken in order until the next would
// break a limit; the rest is dropped and the request goes on. The client interceptors do the
// same when they write the header, so the caller's own baggage at or over the limits (64
// members, or 8 KB) never pushes the decision out; when something of it must go they keep
// its members in key order, always the same, and the context they pass on (to otelgrpc,
// which writes the header again) holds what the header says. In the process, as in
// OpenTelemetry, baggage is not limited: WithDecision adds the decision whatever the size.
//
// A request over the limits is served, not refused with InvalidArgument: baggage is added by
// proxies, meshes and client libraries that the called service's owner does not control,
// W3C lets a receiver drop members to meet the limits, and refusing would turn a telemetry
// side channel into failed calls on every instance, while dropping keeps the one member
// routing depends on. Refusing would not save the work either: the headers must be read to
// know they are over. The merge reads each header byte a bounded number of times and
// allocates only its result, so a request of 400 headers of 64 members costs about what the
// largest legal baggage costs (BenchmarkServerBaggage).
//
// # Costs
//
// During an open release the interceptors build nothing per call in the common cases. The
// rule Client keeps, for each open channel, the baggage of a blue and of a green decision
// alone and their `baggage` header with its outgoing metadata, built once per rule change; it
// caches the header of any other decision value it meets (64 slots, values up to 1 KB). A
// call that decides with no other baggage takes them, and a call whose baggage is a decision
// alone takes the header: each allocates only the one context that carries them in front of
// the caller's (the values it holds are built with them), when the caller's context has no
// outgoing metadata and, to decide, no baggage of its own; a call whose outgoing metadata is
// already that header alone is passed on as it is, allocating nothing; a call with other
// outgoing metadata gets a copy of it with the header added. The interceptors read gRPC's
// metadata and OpenTelemetry's baggage through the context keys those packages use, learnt
// once by asking their getters, so they read without the copies the getters make; if a key
// cannot be learnt they use the getters and allocate as before. Baggage with other members is
// written out per call. The server interceptors cache what each single header they meet gives (64 slots per
// interceptor, headers up to 1 KB): a header seen before is not parsed again and costs one
// context, and when otelgrpc's handler already extracted the same baggage from it the context
// is left as it is and nothing is allocated. Nothing is added to a handler's outgoing
// metadata: as with gRPC and otelgrpc, only a client interceptor (or propagator) on the next
// call writes the header. A header not seen before is parsed within the limits as described
// above. The caches are fixed-size and direct-mapped, lock-free, and a header a caller chooses can only make
// them miss, never grow.
//
// BenchmarkClientInterceptor, BenchmarkServerInterceptor, BenchmarkServerBaggage and
// BenchmarkInterceptorThroughput (against grpc's round_robin in the same run) measure these
// paths; README "Benchmarks" has the figures.
package traffic
