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
// # Serving
//
// The instance's server (Server) comes with its interceptors: in-flight accounting, the
// offline flag, and baggage extraction for sticky decisions. It follows its app's channel
// and re-puts its record's channel and traffic_weight when the rule changes, and passes the
// channel's events to components that implement EventHandler.
//
// # Offline
//
// Drain (POST /offline, the Kubernetes preStop hook) flags every response
// x-switchyard-offline: 1 (header and trailer; requests are still served), deregisters, sets
// gRPC health NOT_SERVING and readiness 503, closes GoingOffline (long streams can end
// cleanly), stops components after their in-flight work, and waits until no request is in
// flight and none arrived for QuietPeriod (default 1 s), at most MaxDrain (default 20 s).
// Online (POST /online) undoes it. Offline — what SIGTERM, SIGINT or a returning Run does —
// drains if needed, then GracefulStop, capped by StopTimeout (default 10 s), then Stop, and
// revokes the lease. All are idempotent and safe to call concurrently.
//
// DESIGN.md lists one offline sequence ending in GracefulStop and also says /online undoes a
// manual offline, which a stopped server cannot; so the sequence is split in two: Drain (what
// /offline does, undone by /online) and Offline (Drain, then stop, what SIGTERM does), which
// is also how Kubernetes sequences preStop and SIGTERM. The flag is set before the
// deregistration, so that every response from the start of the drain tells its caller: in the
// tests each client connection sent at most one request after the drain began.
//
// # Admin HTTP
//
//	GET  /healthz/live   200 while the process runs (liveness probe)
//	GET  /healthz/ready  200 once registered and serving, else 503 (readiness probe)
//	POST /offline        Drain; 200 with the status when drained
//	POST /online         undo a Drain; 409 unless drained
//	GET  /status         JSON: state, registered, offline, in-flight, channel, color, weights
//
// /offline and /online accept only loopback callers, or, when Config.AdminToken is set, any
// caller with "Authorization: Bearer <token>"; others get 403.
//
// # Locking
//
// Transitions are serialized by Instance.opMu; a concurrent caller waits and then finds the
// state the first one left. Interceptors read atomics only and allocate nothing while the
// instance is online (57 ns per call, BenchmarkGate).
package lifecycle
