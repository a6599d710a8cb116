// Package balancer is switchyard's gRPC load-balancing policy, registered as
// "switchyard_weighted" (Name). It implements DESIGN.md "The weight formula", the picking side
// of "Stickiness", and the consumer side of "Offline notification".
//
// The resolver of package registry selects it by default, so a client that dials
// switchyard:///<app> uses it without writing a service config. It is built like grpc-go's
// round_robin, one pick_first child per endpoint, but keeps those children itself (as
// endpointsharding does for round_robin) so that what it knows of an endpoint lasts across
// updates: the endpoint's info is read when its attributes change, its Done callback is built
// once, and a resolver update only reaches the children whose addresses changed or that are
// not READY (a READY pick_first child ignores an update with the same addresses).
//
// # Picking
//
// Among READY endpoints it picks in proportion to the effective weight
//
//	weight/100 × traffic_weight (only when both colors are present, else 100) × warmup factor
//
// where the warmup factor is clamp(uptime/warmup, 0.01, 1). While any endpoint warms, the
// picker is rebuilt at least 20 times over the ramp (every warmup/20, between 10 ms and 1 s).
// If every ready endpoint weighs 0 (drained), it picks among them evenly rather than fail,
// except while an endpoint of non-zero weight is connecting (a new consumer whose drained
// endpoint connected first): then the pick waits (ErrNoSubConnAvailable; gRPC holds the call
// for the next picker) until that endpoint is READY, or it fails (TRANSIENT_FAILURE; gRPC's
// connect timeout, 20 s by default, ends a connection that hangs), or the call's deadline
// passes. The weights are stored scaled by a power of two, so the largest is below 1: any
// finite weights, up to MaxFloat64, keep their exact shares (two at 1e308 split 50/50, where a
// plain running total would overflow); NaN and negative weights count as 0, +Inf as MaxFloat64.
// Picks follow a Weyl sequence over the cumulative weights (found in O(1) through a guide
// table, which finds exactly what a binary search would), so shares are met within a few
// picks: any Fibonacci number n of consecutive picks (377, 10,946, …) gives each endpoint n ×
// its share ±2, as the tests check; 20,000 calls at a 1 % blue share went 1.000 % to blue
// (BenchmarkSplitAccuracy). That is the pick of every call while the endpoint it draws holds
// fewer than 2 calls; an endpoint holding more may hand the pick to a less loaded one of
// its color (see Load). Each color's share stays exact either way.
//
// # Load
//
// Weights say what an endpoint should get; how long it takes to answer and how many calls it
// holds say what it can take. Per endpoint the policy counts the calls picked and not yet
// done, exactly: Pick adds one to the endpoint it returns and the endpoint's Done callback
// takes it off (gRPC calls Done once for every pick, also for one it gives back unused; a
// stream counts until it ends). Done also counts the calls answered (no error, or the error
// of a wrong request; not a sick server's code, nor CANCELED).
//
// Latency is measured in windows, not per call. One sampler per ClientConn ticks every 20 ms
// while calls go on (a Done starts it; it stops after 10 ticks that find no call outstanding,
// and at Close): each tick adds, per endpoint, calls outstanding × the time since the last
// tick (read from the clock, so a late tick counts its lateness); every 10 ticks (200 ms) an
// endpoint that answered at least 8 calls in its window gets
//
//	latency = (area + ½ area before) / (answered + ½ answered before)
//
// (Little's law, the earlier windows' sums halved at each window: about the last two count).
// One that answered fewer carries its window on and keeps its last latency; one never
// measured has none until the first tick by which it has answered 8. Pick and Done read no clock for it: a window's figure rests on exact
// counts and on at least 8 calls, so a loaded CPU, which slows the calls and the ticks alike,
// moves it little. The latency is the time from pick to Done as the client sees it; an
// endpoint holding long-lived streams is measured long.
//
// A pick draws its first candidate by weight, as above. Unless that endpoint holds fewer than
// 2 calls (and failed none recently: below), it draws a second, uniformly among the other
// endpoints of the same color in the same set (a sticky request's color, or, for an undecided
// one, the first candidate's color among all; colorless endpoints are one group), from a
// second deterministic sequence, and compares
//
//	cost = latency × (calls held + 1) / base weight     (EndpointInfo.Weight)
//
// taking the second when cost1 >= 0.8 × cost2: the first keeps its pick only if it costs
// clearly less. A first candidate never measured is costed at the second's latency (the loads
// decide). The second must have been measured, have a base weight above 0, and not be marked
// as failing: a call to it that ends with a code of a sick server (UNAVAILABLE, INTERNAL,
// UNKNOWN, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, DATA_LOSS) marks it; the first of its
// calls to end a second or more after its last such failure, or the sampler's next window
// after that second, clears the mark. A first candidate so marked hands its pick to any
// second that is not, whatever the costs. Codes of a wrong request (NOT_FOUND,
// INVALID_ARGUMENT, FAILED_PRECONDITION, CANCELED, …) do not count. Whatever excludes an
// endpoint from a pick (not READY, marked offline, degraded for a sticky request) excludes it
// as a second too: the second is drawn from the same set.
//
// Why it is built so:
//
//   - An endpoint holding fewer than 2 calls keeps its pick, so callers one after the other,
//     and any fleet where no endpoint holds two, get exactly the weighted picks above.
//   - The second candidate is always of the first's color, so a release's color split (the
//     canary's W/(100+W), the blue percent) is exact by construction at any load, not
//     statistically, and a sticky request never crosses colors.
//   - Latency, not calls held alone: a cold instance gets few calls (warmup) and so holds
//     fewer than the busy fast ones, but it answers slowly and is never a cheap second. A
//     new instance is no second until measured: it gets its warmup share, then takes more
//     if it keeps up.
//   - The second is drawn uniformly, not by warmup-scaled weight, and wins at equal cost: the
//     warmup ramp shapes the first candidates, but among instances that keep up the calls
//     held even out, so an old instance killed while its replacements ramp holds about a
//     round_robin share of the calls in flight (compared at 1.5, 1.25 or 1 instead of 0.8,
//     it held 32, 29 or 27 %: the first candidates, mostly old instances, kept too many).
//   - Comparing per unit of base weight keeps a low-weight instance from being flooded.
//   - A drained (weight 0) endpoint never gains a pick; one that fails fast holds few calls,
//     so it is no second while marked, and its own first-candidate picks go elsewhere.
//
// Issue 18's scenarios (scenario_test.go: real greeter servers over loopback, registered in
// etcd, 16 closed-loop callers; quiet machine, medians of 3 runs; before = weights only):
//
//	                                              round_robin  before   now
//	cold instance (30 ms for 3 s, 3 of 1 ms):
//	  release window p99 / steady p99               8.4×       1.19×   1.09×
//	  release window throughput / steady            0.50×      0.91×   0.95×
//	  its share of the calls while cold             24.8 %     1.13 %  0.50 %
//	one of 4 made 10× slower: its share from 1 s    25 %       25 %    1.8 %
//	  (within 2× its capacity share, 6.5 %, after 250 ms)
//	old instance killed while 2 replacements ramp:
//	  its share of the calls in flight              25.0 %     45.5 %  25.0 %
//	  calls failed per kill (no retry)              4.05       6.85    4.05
//
// What it changes: among the endpoints of one color, concurrent calls go by what each
// endpoint can take rather than exactly by weight; from one caller, or two, the shares are
// the weights exactly, as before. Under load, a warming instance that answers as fast as the
// rest takes more than its warmup share (in the cold scenario, once warm, 19.7 % against a
// warmup share of 4.3 %): warmup protects an instance until it is measured and while it is
// slow, not beyond. To pick by the weights alone, as before, set {"loadAware": false} in the
// policy's config, e.g. registry.ResolverConfig.ServiceConfig =
// `{"loadBalancingConfig":[{"switchyard_weighted":{"loadAware":false}}]}`; the sampler then
// does not run (TestLoadAwareOffKeepsTheWeights: the 10× slower instance keeps 25 %).
//
// # Sticky requests
//
// If the pick's context carries a decision (package traffic, baggage x-deploy-channel-type)
// for the endpoints' channel, the pick is restricted to that color's usable endpoints,
// weight-0 ones included (weight 0 only means "no new entries"). Usable means READY and not
// degraded (EndpointInfo.Degraded: the instance says it cannot keep its color's requests on
// its color further down). If every ready endpoint of that color is marked offline (see
// below), the pick uses those: they still serve what reaches them, and crossing would send a
// request decided for new code to old code (a canary being replaced).
//
// While the color has no usable endpoint but one is connecting, the pick waits for it, for at
// most the sticky wait from when that endpoint began connecting: DefaultStickyWait (3 s), or
// {"stickyWait":"5s"} in the policy's service config. A canary that accepts TCP but never
// answers would otherwise hold the request for gRPC's 20 s connect timeout.
//
// When the color has no usable endpoint (none, all failing, degraded, or connecting past the
// wait), what happens depends on the caller (DESIGN.md "Faults": new code never calls old
// code):
//
//   - The caller is code of that color (lifecycle's server interceptor marks the context of a
//     request decided for the instance's own color): the pick fails with UNAVAILABLE, saying
//     why, and counts it in switchyard.balancer.sticky_refusals. Crossing here could be new
//     code calling old code.
//   - Any other caller (the chain's entry, a colorless or other-colored instance): the pick
//     goes to the other color and re-decides the request for it (an extra baggage header,
//     which the next hop's server interceptor merges over the first), so the chain below
//     stays on the color it runs on; counted in switchyard.balancer.sticky_fallbacks (and a
//     debug log line).
//
// Each connection also publishes, on a process-wide board (internal/reach), whether each color
// of the called app's channel has a usable endpoint (or one connecting within the wait).
// lifecycle reads it: an instance that cannot reach its own color of an app of its channel
// marks its record degraded, so the hop above stops sending it requests of its color and the
// entry re-decides them. A dead canary thus stops receiving decisions within the time to see
// its connection fail plus one etcd write and watch, not a lease TTL.
//
// # Offline marks
//
// Every pick's Done callback looks for deploy.OfflineHeader ("x-switchyard-offline: 1") in the
// trailer; the first flagged response takes that endpoint out of the picker at once, without
// waiting for the registry. Only a different registry record for that instance clears the
// mark, and a new registration is always a different record: EndpointInfo.Epoch (the key's
// create revision) changes even when every other field is the same, so /offline then /online
// clears marks on consumers that saw it late. A change of Channel or TrafficWeight alone (a
// consumer applying the rules itself, registry.ResolverConfig.Rules, changes them at every
// shift) is not a newer record and keeps the mark. Marks of endpoints that leave the resolver
// state are dropped. If every ready endpoint
// is marked, they are all picked (they still serve); likewise a sticky request picks the
// marked endpoints of its color when that color has no other ready one.
//
// # Retries
//
// An instance that dies abruptly cuts the calls in flight on it. A retry policy for methods
// that are safe to run twice hides that: pass registry.RetryPolicy(...) as
// ResolverConfig.MethodConfig. In the tests, killing one of 4 instances under 16 callers cut
// the calls in flight on it: they failed without it (4 of ~110 calls) and none did with it.
//
// # Cost
//
// Pick takes no lock and allocates nothing: an atomic add to choose, a baggage lookup when the
// endpoints are in a channel, a guide-table lookup whose cost does not grow with the
// endpoints (a binary search over the cumulative weights grows with their logarithm), atomic
// loads of the candidate's calls held and failure mark, and atomic adds to count the pick
// (switchyard.balancer.picks) and the call held; when the candidate holds 2 or more calls, a
// second draw and four more atomic loads (calls held, two latencies, failure mark). No clock.
// BenchmarkPick at 10 to 10,000 endpoints: 20 to 26 ns undecided and 23 to 27 ns sticky (15
// to 21 and 18 to 22 ns before load-aware picking: the atomic add of the call held is most of
// the difference), 23 to 49 ns when every first candidate is loaded (1.6× at 10 endpoints,
// 2.3× at 1,000 and 10,000, where it is memory-bound: two endpoints' loads per pick). The
// latency sampler's cost is in Load's figures above and in sampler.go (BenchmarkSample:
// 0.1 ms of CPU per second per ClientConn at 1,000 endpoints, 0.13 ms at 10,000).
// The baggage lookup remembers, per connection, the decision of the last 64 or so baggages
// it saw (by identity: otel never changes a baggage once built), so a request carrying one
// already seen costs no member lookup and no parsing. traffic's interceptors give most
// requests such a baggage: the client one puts the same pre-built baggage in every call it
// decides, the server one the baggage it parsed once per distinct header. A baggage built
// per request (otelgrpc's server extraction, which traffic's server interceptor keeps when it
// says the same) is looked up as before, at about the same cost.
//
// A picker is rebuilt when an endpoint changes state or record, in two passes over the
// endpoints with a handful of allocations sized up front; what the policy knows of an
// endpoint is kept across updates, so one changed record among many costs a small, fixed
// number of allocations, where grpc's round_robin allocates for every endpoint
// (BenchmarkRebuildOneChange, BenchmarkConnectStorm). RPC throughput over loopback is close
// to round_robin's: with 8 calls in flight on 4 servers of one process on 2 cores, a call
// took 2 % longer than through round_robin (medians of 3; 4 % before load-aware picking;
// BenchmarkThroughput, the CPU is the limit there). The figures are in the README.
//
// # Logging
//
// The policy logs through the logger the resolver attaches to its states (WithLogger):
// registry's resolver attaches ResolverConfig.Logger, so a ClientConn dialed through it logs
// where the rest of the consumer does. Before the first such state, and on a ClientConn
// whose resolver attaches none, it logs through slog.Default() as it was when gRPC built the
// policy. Every line carries component=switchyard-balancer and target. Pick logs nothing
// above debug level and does not consult the logger unless a sticky request crosses or fails.
//
// # Metrics
//
// The policy records on the meter provider the resolver attaches to its states
// (WithMeterProvider): registry's resolver attaches ResolverConfig.MeterProvider when it is
// set. On a ClientConn whose resolver attaches none, it records on otel.GetMeterProvider()
// (the global one, as it is when the first resolver state arrives). Instrumentation scope
// github.com/switchyard-go/switchyard/balancer:
//
//	switchyard.balancer.picks             Int64ObservableCounter {pick}
//	    switchyard.app (the target's app), switchyard.color and switchyard.channel (the
//	    picked endpoint's: "blue", "green" or "" for colorless; its release channel or "")
//	switchyard.balancer.offline_marks     Int64Counter {mark}    switchyard.app
//	switchyard.balancer.sticky_fallbacks  Int64Counter {request} switchyard.app (the target's app)
//	switchyard.balancer.sticky_refusals   Int64Counter {request} switchyard.app
//
// Picks are counted in Pick itself, with one atomic add on a counter per (color, channel)
// of the connection (no lock, no allocation); a callback the balancer registers reads the
// counters at each collection, and Close unregisters it, so a closed ClientConn leaves
// nothing in the provider. A pick is counted when the endpoint's picker gives a connection:
// if gRPC then finds that connection closing (an endpoint leaving as the call is picked), it
// picks again and both count, so picks can exceed the calls a server saw by those few. An
// offline mark is counted when it is taken, once per instance record.
//
// # No instance
//
// When the resolver names no endpoint, calls fail at once with UNAVAILABLE and a message
// naming the app: for a switchyard:///<app> target, that no instance of it is registered
// (start one, or check the app name and the registry prefix); if the resolver reported an
// error instead, the message names the app and quotes that error. A call with grpc.WaitForReady waits for an instance instead,
// and if none comes before its deadline, gRPC's DEADLINE_EXCEEDED quotes the same message
// as the "latest balancer error".
//
// # Locking
//
// gRPC calls the Balancer methods one at a time; children's state updates, the refresh timer
// (warmup, sticky wait) and Done callbacks may come from other goroutines. wBalancer.mu guards
// its state and is held while a picker is built and sent, so pickers go out in order; the
// reach board's lock is taken under it, never the other way round. Pickers are immutable.
package balancer
