// Package lifecycle runs one instance of an app losslessly, from start to offline. It
// implements DESIGN.md "Lifecycle of an instance" and the provider side of "Offline
// notification", wiring registry, traffic and the balancer's offline flag together. It is
// what a service's main uses:
//
//	inst, err := lifecycle.New(lifecycle.Config{Client: etcd, App: "order", Version: "v2"})
//	orderpb.RegisterOrderServer(inst.Server(), &server{})
//	err = inst.Run(ctx) // serves until SIGTERM/SIGINT, then goes offline losslessly
//
// # Start
//
// Listen and serve → admin HTTP (probes say "not ready") → load the rules → readiness checks →
// RegisterDelay → register with start_time, warmup and the traffic weight of the app's
// channel (so an instance of a drained color registers drained) → start components → gRPC
// health SERVING and /healthz/ready 200. A failure stops what started, in reverse, and returns
// the joined errors.
//
// A start does not give up because etcd does not answer: while loading the rules or
// registering fails for want of etcd (registry.ErrEtcdUnavailable), Start tries that step
// again, an attempt per Config.RequestTimeout (default 5 s; an attempt lasts that long while
// etcd is down), with a Warn line per attempt ("lifecycle: etcd did not answer; trying again
// until StartTimeout", with the step, the attempt, the time waited and the error), until
// StartTimeout (default 2 min); then it fails with an error saying so. Each attempt resets the
// etcd connection's reconnect backoff, so it reaches etcd as soon as etcd answers, whatever
// gRPC's reconnect backoff has grown to. Every etcd request of the instance is bounded by
// Config.RequestTimeout.
//
// A start fails closed when it cannot read its channel: if a rule key that may decide the
// app's traffic exists but cannot be read (garbage, or "v":2 from a newer tool) and the
// process has no earlier version of it (traffic.Rules.UnreadableFor), the instance does not
// know whether its color is drained, so it does not register at all — not at full weight
// with no channel, which is what "no open channel" would mean, and not at weight 0 either.
// Start waits: gRPC health NOT_SERVING, /healthz/ready 503 with the reason, Status.Blocked set,
// an Error log line naming the key, the error and what to do (put a valid record at the key —
// the error shows one — upgrade the instance, or delete the key) at every change of the rules
// and every RuleRetryLog (10 s). It follows the rule client's watch, so the moment the key
// is repaired or deleted it carries on with the normal start and registers with the weight
// the rule gives (drained, if it is). If StartTimeout (default 2 min) passes first, Start
// fails with an error naming the key, and Run returns it: under Kubernetes the pod restarts
// and tries again, and the rollout stalls visibly instead of sending traffic to a drained
// color. Why wait unregistered rather than register at weight 0: an unregistered instance
// cannot be picked by any consumer (a weight-0 endpoint still can be, while its consumer's
// weighted endpoints connect), its record never carries a channel it has not read, and the
// rollout's own readiness gate reports the stall. A rule key whose apps can be read and do
// not include the app, or garbage while the app is in an open channel that can be read, does
// not hold the start up (traffic's doc says why). An instance already running keeps its last
// good rule when the key becomes unreadable.
//
// # Serving
//
// The instance's server (Server) comes with its interceptors: in-flight accounting, the
// offline flag, the request signals (see Signals), baggage extraction for sticky decisions,
// and the own-color mark. It follows
// its app's channel and re-puts its record's channel and traffic_weight when the rule changes.
//
// # Calling other apps
//
// Instance.Dial(app, opts...) is the client connection a service's code uses to call another
// app: switchyard:///<app> through the registry resolver, with the instance's rule client as
// its Rules (a shift reaches the picker as soon as the instance has it), the switchyard
// balancer, the rule client's interceptors first in the chain (a call made under a request's
// context keeps the request's sticky decision downstream; a call with none is decided by the
// rule), and plaintext transport credentials; opts come after, so a
// grpc.WithTransportCredentials replaces the plaintext. It may be called before Start (as
// grpc.NewClient, it connects nothing): calls through it wait until Start has loaded the rules
// and fail with codes.FailedPrecondition if the instance stops before that.
//
//	inst, _ := lifecycle.New(cfg)
//	toInventory, err := inst.Dial("inventory")
//	orderpb.RegisterOrderServer(inst.Server(), &server{inventory: inventorypb.NewInventoryClient(toInventory)})
//	err = inst.Run(ctx)
//
// # Components
//
// Work other than RPCs (an mq.Consumer, a job.Executor) runs as components, given to
// Instance.Append before Start: started in order once the instance is registered (and again
// by Online), stopped in reverse while it drains. Those that must leave a drained color are
// built with the Instance as their deploy.Drains: its Color, and Drained, which says what the
// app's channel rule drains (traffic.DrainOf: blue at 0 %, green at 100 %, nothing outside an
// open channel) and closes a channel at each change, set when the rules load (before any
// component starts) and at each rule event, before the record's re-put:
//
//	inst, _ := lifecycle.New(cfg)
//	consumer, _ := mq.NewConsumer(mq.ConsumerConfig{..., Drains: inst})
//	executor, _ := job.NewExecutor(job.Config{..., Drains: inst})
//	inst.Append(consumer, executor)
//	err := inst.Run(ctx)
//
// A component that implements EventHandler also receives the rule events of the app's
// channel, as delivered.
//
// # Faults downstream: new code never calls old code
//
// Own-color mark. While the instance has a color and its app is in an open channel, a request
// whose sticky decision for that channel is the instance's own color is served with its
// context marked (internal/sticky.Own): the code serving it is of the decided color. The
// switchyard balancer, picking for a call the handler makes under that context, never
// crosses to the other color of the channel: if the decided color has no usable instance of
// the called app, the call fails UNAVAILABLE instead (a blue caller calling green would be
// new code calling old code). Other requests are not marked and may cross as before (the
// balancer then re-decides them for the color they reach). Nothing to configure.
//
// Degraded. While the instance has a color and its app is in an open channel, it watches what
// the process's gRPC connections reach (the balancer publishes, per connection, which colors
// of the called app can take a request now): when an app of its channel that it calls has no
// serving instance of its color while the other color serves, it sets its record's Degraded
// (registry.Record.Degraded), e.g. "no serving blue instance of inventory", logs a warning,
// and shows it in Status.Degraded (GET /status). Consumers then send it no request decided for
// its color, so the chain's entry re-decides those for the other color: a dead or stuck canary
// further down stops receiving decisions within the time to see its connection fail plus one
// etcd write and watch, not a lease TTL, and the only calls
// lost are those under way at the instance meanwhile (they fail UNAVAILABLE, none crosses).
// When its color serves again (a new instance is up), it clears the mark (an Info log line)
// and decisions for its color come back. The mark is computed again at every change of the
// connections and of the rule; it is cleared when the channel closes; a Drain keeps it for
// the next registration. The instance's own app does not count (a connection of the process
// to its own app would otherwise keep it marked). Nothing to configure: the bounded wait for
// a connecting instance is the balancer's stickyWait (default 3 s).
//
// The connections counted for an instance are those its own-color calls went through: the
// balancer notes the instance on a connection when a call of its color finds no usable
// endpoint there (it waits or is refused). Several instances in one process (tests, the demo)
// therefore do not mark each other. An instance whose color never failed to find an endpoint
// is not marked; the first of its calls that does is the one that marks it.
//
// # Offline
//
// Drain (POST /offline, the Kubernetes preStop hook) flags every response
// x-switchyard-offline: 1 (header and trailer; requests are still served), starts the
// deregistration, sets gRPC health NOT_SERVING and readiness 503, closes GoingOffline (long
// streams can end cleanly), stops components after their in-flight work, waits until no
// request is in flight and none arrived for QuietPeriod (default 1 s), and then for the
// deregistration, all within MaxDrain (default 20 s). Online (POST /online) undoes it.
// Offline — what SIGTERM, SIGINT or a returning Run does — drains if needed, then
// GracefulStop, capped by StopTimeout (default 10 s), then Stop, and revokes the lease. All
// are idempotent and safe to call concurrently.
//
// The local steps never wait for etcd: the deregistration runs beside them, from right after
// the flag, and the drain waits for it only once they are done, until etcd confirms the
// delete or about RequestTimeout (default 5 s) has passed. Its etcd request is made in attempts, the
// first 500 ms long (registry's doc, "Attempts"): right after an etcd leader dies, a surviving
// member forwards the delete to the dead leader and etcd drops it, and the second attempt
// reaches the new leader. With a 3-member etcd whose leader was killed right before POST
// /offline, under 16 callers through a consumer, /offline answered 200 "done" 282–556 ms
// after the kill (median 516 ms, 10 runs; 256–591 ms, median 540 ms, with the race detector
// and 4 CPU burners on 2 cores; BenchmarkDrainAfterLeaderKill), the record was deleted by
// then, and no call failed; before, every run took 5.00–5.10 s and answered 500, with
// readiness, health, GoingOffline and the components waiting behind the delete. With etcd cut
// off, readiness is 503 and GoingOffline closed within milliseconds (2–13 ms in
// TestDrainDoesNotWaitForEtcd; it was RequestTimeout).
//
// What a drain answers. POST /offline answers 200 with the status (GET /status) once the
// instance is drained; its "deregistration" is "done" when etcd confirmed that the record is
// deleted, or "pending" when it had not by then (etcd down, or a leader change longer than
// RequestTimeout), with "registry_error" saying the last attempt's error: the instance is out
// of service all the same, the registrar keeps deleting the record in the background
// ("pending" turns "done" in GET /status when it has), the offline flag tells callers
// meanwhile, and Offline's lease revocation deletes the record too. A 500 only means that
// something else failed (a component's Stop, a drain while starting). Drain, the Go call,
// returns nil when drained and deregistered, and an error wrapping ErrDeregistrationPending
// (and the last etcd error) when drained with the deregistration pending:
//
//	err := inst.Drain(ctx)
//	if errors.Is(err, lifecycle.ErrDeregistrationPending) {
//		// out of service; the record is deleted in the background (err joins a
//		// component's Stop error too, if one failed)
//	}
//
// Abort, for tests and fault drills, stops the instance as a killed process stops: gRPC Stop
// (calls in flight fail), the admin server closed, the components stopped with a ctx already
// cancelled, and nothing sent to etcd or callers — no offline flag, no drain, no
// deregistration, no revocation — so the record stays in etcd, and consumers keep picking it,
// until its lease expires (Config.TTL). Abort and Offline after it return at once. Use it to
// test how your callers and your release cope with an instance that dies.
//
// Components follow one Stop contract (written in package mq, "Stop contract"): calls in
// progress finish, or their ctx is cancelled at Stop's ctx deadline; work not started is
// handed back; Stop returns by that deadline; nothing is left running. lifecycle passes them
// a ctx that ends with the drain's deadline.
//
// Deadlines. The whole drain — the components' Stop (their ctx ends with it), the wait for
// quiet and the deregistration beside them — takes at most MaxDrain. Offline takes at most
// Config.OfflineTimeout: MaxDrain + StopTimeout + RequestTimeout (the lease's revocation) +
// 1 s (the admin server's shutdown), 36 s with the defaults, whether etcd answers or not; each
// etcd request is bounded by RequestTimeout, and a deregistration etcd has not confirmed when
// the drain ends is left pending (the registrar keeps deregistering in the background until
// the lease is revoked or expires, and the offline flag has told callers meanwhile). During an
// etcd outage, with the defaults, a drain takes about RequestTimeout (5 s; or QuietPeriod, if
// the traffic takes longer to end) and Offline about 10 s (one RequestTimeout for the
// deregistration, one to revoke). Under
// Kubernetes, terminationGracePeriodSeconds must cover OfflineTimeout (with the defaults: 40 s
// rather than Kubernetes' default 30 s, or lower MaxDrain); a preStop hook that runs POST
// /offline does the drain part of it, and Offline then skips the drain.
//
// DESIGN.md lists one offline sequence ending in GracefulStop and also says /online undoes a
// manual offline, which a stopped server cannot; so the sequence is split in two: Drain (what
// /offline does, undone by /online) and Offline (Drain, then stop, what SIGTERM does), which
// is also how Kubernetes sequences preStop and SIGTERM. The flag is set before the
// deregistration starts, so that every response from the start of the drain tells its caller:
// in the tests each client connection sent at most one request after the drain began.
//
// # Admin HTTP
//
//	GET  /healthz/live   200 while the process runs (liveness probe)
//	GET  /healthz/ready  200 once registered and serving, else 503 (readiness probe; the body
//	                     says why, e.g. the unreadable rule a start waits for)
//	POST /offline        Drain; 200 with the status when drained, whose "deregistration"
//	                     says "done" or "pending" (retried in the background; see Offline)
//	POST /online         undo a Drain; 409 unless drained
//	GET  /status         JSON: state, registered, offline, in-flight, channel, color, weights,
//	                     blocked (why a start waits), degraded (why its color cannot be kept),
//	                     deregistration (done/pending, once draining), registry_error (why
//	                     etcd does not hold what the registrar wants yet)
//	GET  /stats          JSON window.Stats: identity, state, in-flight and the last minute's
//	                     window (see Signals); what the dashboard polls
//
// /status and /stats are read-only, need no token and make no etcd request. The instance's
// record carries the admin server's address (registry.Record.Admin: the host of the gRPC
// address it registers and the admin listener's port), so tools find /stats from etcd.
//
// /offline and /online accept only loopback callers, or, when Config.AdminToken is set, any
// caller with "Authorization: Bearer <token>"; others get 403. The admin server closes a
// connection that sends no request headers within AdminReadHeaderTimeout (5 s) and a
// keep-alive connection idle for AdminIdleTimeout (30 s), and holds at most AdminMaxConns
// (64) connections: a new connection beyond that closes the connection idle the longest, or,
// if none is idle, waits unanswered until one closes. The Bearer scheme is matched
// case-insensitively (RFC 7235). Behind a sidecar proxy (Istio, Linkerd), remote requests
// reach the admin port from 127.0.0.1 (or 127.0.0.6), so loopback proves nothing there: set
// AdminToken.
//
// # Signals
//
// Every instance records its golden signals on Config.MeterProvider (default
// otel.GetMeterProvider(), the global one, a no-op until the process sets one), as OTel
// metrics of the instrumentation scope github.com/switchyard-go/switchyard/lifecycle:
//
//	name                                kind, unit                              attributes
//	switchyard.server.requests          Int64Counter {request}                  app, color, version, channel, rpc.method, rpc.grpc.status_code
//	switchyard.server.duration          Float64Histogram s                      app, color, version, channel, rpc.method
//	switchyard.server.in_flight         Int64ObservableUpDownCounter {request}  app, color
//	switchyard.server.crossings         Int64Counter {request}                  app, color, channel, switchyard.decided
//	switchyard.instance.state           Int64ObservableGauge                    app, color, switchyard.state
//	switchyard.instance.registered      Int64ObservableGauge                    app, color
//	switchyard.instance.drain.duration  Float64Histogram s                      app, color
//
// app, color, version and channel are the attributes switchyard.app, switchyard.color ("" for
// an instance of no color), switchyard.version (Config.Version) and switchyard.channel (the
// open channel its app is in, "" for none; it follows the rule). The server metrics are
// recorded by the interceptors of Server, for unary calls and streams (a stream's duration is
// its whole life; in-flight counts it until it ends): rpc.method is the full method name
// ("/pkg.Service/Method") of the services registered when Start begins serving, "_OTHER" for
// any other (only a grpc.UnknownServiceHandler serves those: a client must not be able to grow
// the series without bound); rpc.grpc.status_code is the code the server sends (a handler's
// context error counts as Canceled or DeadlineExceeded, another error that is no status error
// as Unknown). The duration buckets are those of the window (1 ms to 5 s). A crossing is a
// request whose sticky decision for the instance's channel names the other color
// (switchyard.decided): stickiness broke on the way, e.g. a middle service dropped the
// baggage; it is counted only while the instance has a color and its app is in an open
// channel. state is 1 for the current state (new, starting, serving, draining, drained,
// stopped) and 0 for the others; registered is 1 while the registrar's record is in etcd;
// drain.duration records each Drain, from its start until quiet (or MaxDrain). The observable
// metrics are reported from Start until the instance is stopped.
//
// The attribute sets are built once, for the instance's identity: per registered method when
// Start begins serving (with status code OK; another code's the first time a method ends with
// it), and again when the app's channel changes (swapped in whole); the interceptors only pick
// the ready-made one. With the global no-op
// provider a request that is not decided for the own color still allocates nothing (nor does
// it with the SDK's provider); BenchmarkGate, BenchmarkGateDecided and BenchmarkGateSDK
// measure them.
//
// The instance's window (package window: the last minute in 1 s buckets) gets the same
// requests: count, errors, latency, crossings; and the work of its components: mq and job
// components given the Instance as their Drains report each message handled and job item run
// to it (Instance implements deploy.Worker). A request is an error of the window when its
// code is a server-side failure (ServerFailure: Unknown, DeadlineExceeded, ResourceExhausted,
// Unimplemented, Internal, Unavailable, DataLoss); codes a client causes (InvalidArgument,
// NotFound, PermissionDenied, Canceled, …) are not. GET /stats serves it (Instance.Stats).
//
// # Locking
//
// Transitions are serialized by Instance.opMu; a concurrent caller waits and then finds the
// state the first one left. Interceptors read atomics only and allocate nothing while the
// instance is online, except the one context of a request decided for its own color
// (BenchmarkGate, BenchmarkGateDecided and BenchmarkGateSDK measure them). The degraded mark is kept by one
// goroutine per instance, from registration to Offline.
package lifecycle
