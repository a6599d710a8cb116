// Package registry keeps instances of gRPC services in etcd and resolves them for gRPC
// clients. It implements DESIGN.md "etcd key layout" and "Instance record", and the
// registration steps of "Lifecycle of an instance".
//
// # Providers: Registrar
//
// A Registrar registers one instance under <prefix>/services/<app>/<id> (default prefix
// "/switchyard") as a JSON record attached to a lease (default TTL 10 s) that it keeps alive
// in the background. Register waits for the readiness checks (Config.Checks, polled until they
// all pass or Config.CheckTimeout runs out, naming the check that failed) and then for
// Config.RegisterDelay before writing anything, so an instance is never found before it can
// serve. Update re-puts the record under the same lease (the traffic package uses it for
// channel and traffic_weight). Deregister deletes the key at once and keeps the lease, so that
// Register can put it back; Close revokes the lease.
//
// A record says where its instance serves (Addr, the gRPC address consumers dial) and, in
// Admin ("admin" in JSON, omitted when empty), where its admin HTTP server listens: lifecycle
// sets it to Addr's host and the admin listener's port, and the dashboard (`switchyard
// dashboard`, `switchyard top`) polls its /stats there. Both are validated alike: host:port,
// no wildcard host, a port from 1 to 65535.
//
// Instance ids must be unique within an app. Every write is a transaction that creates the
// key or replaces this Registrar's own record (one on a lease it was granted); a record of
// another live instance is never overwritten or deleted: Register returns a
// *DuplicateIDError (errors.Is ErrDuplicateID) naming the holder's lease, and a registration
// lost in a partition whose id was taken meanwhile stays StateLost (Registrar.Err says why)
// until the key is free. The Registrar also watches its own key: if someone else deletes or
// overwrites the record, it goes to StateLost and puts the record back once the key is free,
// rather than reporting registered while etcd has no record of it. The record of a process
// that died without Close lasts until its lease expires, so a restart with the same id
// within the TTL is refused too.
//
// If etcd is unreachable for longer than the TTL, etcd's client gives up on the lease
// (after the TTL, or after DialTimeout+1 s if no keepalive was ever answered); the Registrar
// goes to StateLost, and once etcd answers again it reuses the lease if etcd kept it or grants
// a new one, and writes the latest record, with backoff and without any call from the user.
// State changes reach Config.OnStateChange in the order they were made, and the last one
// delivered is State(); the log gets them too. Update's func runs outside the Registrar's
// locks (it may call the Registrar) and runs again if another Update changed the record
// meanwhile.
//
// Register, Update, Deregister and Close wait for a write in progress only until their ctx
// ends; each etcd request is bounded by Config.RequestTimeout (default 5 s). Deregister and
// Update that return an error keep what they were asked and the Registrar writes it in the
// background.
//
// Attempts. Each etcd request of a Registrar (the record's writes and deletes, the lease's
// grant, check and revocation, whether a call or the background keeper makes them) is made
// in attempts within its RequestTimeout: the first may take 500 ms; one that etcd does not
// answer in its time, or refuses as unavailable (no leader, leader changed, "request timed
// out, possibly due to previous leader failure"), is made again at once (at most one start
// per 50 ms), each next attempt twice as long as the one that ran out, up to RequestTimeout.
// Right after an etcd leader dies, a surviving member forwards a write to the dead leader and
// etcd drops it: a single attempt then waited out the whole RequestTimeout although a new
// leader was elected within a second, where the second attempt now reaches it. With a
// 3-member cluster whose leader is killed right before the write, Update, Deregister and
// Register each returned after about 0.5 s instead of 5 s
// (TestWritesRightAfterALeaderKillTakeShortAttempts: 503–576 ms, under CPU burners too), and
// a drain's record was deleted within 0.6 s of the kill in 10 runs of 10 (lifecycle's
// BenchmarkDrainAfterLeaderKill: 550 ms at worst, 587 ms with the race detector and CPU
// burners; it was 5.09–5.19 s). A slow but working etcd still gets
// attempts as long as it needs: an attempt length that ran out carries over to the next
// request (the keeper's next re-sync), so attempts grow to RequestTimeout, and an answer,
// whatever it says, sets them back to 500 ms
// (TestAttemptsGrowForASlowEtcdAndShrinkAfterAnAnswer). Every request is idempotent (a write
// or delete conditioned on the Registrar's own lease, a lease lookup, a revocation) except a
// lease grant, which, applied but unanswered, leaves an unused lease that expires after the
// TTL.
//
// # Consumers: Watcher, List and the resolver
//
// A Watcher follows one app: it lists the instances, then watches from the list's revision
// + 1. When the watch fails (etcd restarted, leader lost, history compacted while it was
// away) it lists again with backoff. It never empties its set because of a failure: an outage
// keeps the last good set, and a record it cannot decode is skipped, logged, counted (the OTel
// counter switchyard.registry.records.skipped, and Watcher.Skipped) while the last good
// version of that instance stays.
//
// Nor does it empty its set because a partition from etcd let leases expire (Eureka's
// self-preservation, Nacos' protect threshold, with a floor of one instance per color).
// The rule: an instance whose record is deleted while another instance of its color (in the
// app) remains leaves at once, as does one deleted while its lease lives, which is what
// Deregister does (it keeps the lease), however many leave together. The last instance of
// its color whose record vanished with its lease (the lease expired, or was revoked without
// Deregister: a partition or a crash) is held as a suspect, kept in the set and marked in
// Snapshot.Held, until it registers again or WatcherConfig.HoldExpired (default 30 s) has
// passed; past that, suspects stay while no instance of the app is left in etcd. gRPC does not pick an endpoint it cannot connect to,
// so a held instance that really died costs connection attempts, not calls. This holds the
// same whether the deletions arrive live or in a burst after a watch gap or a re-list.
// Instance.Epoch, the key's create revision, tells a new registration from an unchanged
// record; the resolver passes it on as balancer.EndpointInfo.Epoch, so a new registration
// (an /offline then /online, seen late by a consumer) clears that consumer's offline mark.
//
// List reads an app's instances once, for a tool or a one-off check: the records sorted by
// ID, with their Epoch, and the keys it skipped because their value is not a valid instance
// record (each with an error wrapping ErrMalformedRecord), so that a malformed record is
// reported rather than dropped. An empty prefix is deploy.DefaultPrefix. The read lasts until
// ctx's deadline, or DefaultRequestTimeout (5 s) without one; etcd not answering by then is
// ErrEtcdUnavailable. The switchyard CLI's "instances" command uses it.
//
// NewResolverBuilder returns a gRPC resolver for targets switchyard:///<app>, to pass to
// grpc.NewClient with grpc.WithResolvers. Every change the balancer can see becomes a
// resolver.State whose Endpoints carry the instance's address and, in their Attributes, its
// balancer.EndpointInfo (balancer.EndpointInfoFrom reads it; the whole record is the
// Watcher's, not attached); an unchanged instance keeps the same Endpoint, so a weight change
// reuses the connection, and a change of a record's Version or Metadata alone sends nothing.
// While it has never reached etcd it reports the error to gRPC, so RPCs fail fast with
// "registry: no instances known yet: ..." rather than hang, and it recovers by itself. Its
// default service config selects switchyard's weighted policy, package balancer, which this
// package links in (defaultServiceConfig); ResolverConfig.MethodConfig adds method configs
// such as RetryPolicy.
//
// With ResolverConfig.Rules (a *traffic.Rules implements it; default nil), the resolver
// takes each endpoint's release channel and traffic weight from the app's rule instead of
// from the records: an instance of color blue or green gets its color's weight in the open
// channel the app is in, a colorless one weight 100 in that channel, and every instance
// channel "" and weight 100 while the app is in no open channel. These are what
// balancer.EndpointInfo carries (the other fields are the record's).
// When the app's traffic changes, the resolver hands gRPC one new state at once, whether or
// not the instances have re-put their records yet (they still do, for consumers without
// Rules); a record change that the rule already gave (an instance re-putting its channel and
// traffic weight) is not even an update: the resolver's Watcher decodes it, finds nothing but
// the channel and traffic weight changed, and keeps the record it has (so after a shift a
// consumer spends a decode per re-put, not a walk over its endpoints); a state in which no
// endpoint changed is not sent.
// A rule change of another app sends nothing.
//
// Watch responses that follow each other within Coalesce (2 ms), for at most 10 × Coalesce,
// become one state: a lone change reaches gRPC up to 2 ms later, and 100 instances re-putting
// their records together (as after a shift) cost a consumer 2 or 3 resolver updates and picker
// rebuilds instead of 100 (TestReputsThatArriveTogetherAreOneResolverUpdate).
//
// The resolver and its Watcher keep one copy of each record, compactly, shared by the watch's
// set, the Snapshot and the endpoint's attributes (with Rules, a second copy with the rule's
// channel and weight), and an endpoint carries the balancer.EndpointInfo the Watcher built
// for it rather than the record. A test keeps the heap per endpoint, gRPC's state included,
// within twice that of etcd's own naming resolver, which carries no record
// (TestResolverMemoryWithinTwiceEtcdNaming, run with -registry.memory: it measures the
// process heap); README "Benchmarks" gives the figures.
//
// # etcd client settings
//
// None needed. etcd's client keeps gRPC's default reconnect backoff, which grows to 120 s, so
// after an outage it may wait that long before it tries etcd again. From its first Register
// until Close, a Registrar watches the client's connection (clientv3.Client.ActiveConnection)
// and, while it is down (TRANSIENT_FAILURE), resets its reconnect backoff every 300 ms (±20 %);
// a re-registration whose etcd requests failed for want of an answer is tried again at once.
// So every instance is registered again within about a second of etcd answering (a few
// hundred milliseconds in the tests, after outages of 5 s to 20 s), and the other users of
// the same client (the resolver's watch, the traffic rules) reconnect as soon. While the
// connection is up this costs nothing. A client with a capped backoff of its own works the
// same. The Registrar's own retries wait at most a third of the lease TTL (5 s at most), so
// even with their ±20 % jitter two attempts fit inside a lease.
//
// For an etcd cluster (three or five members), give the client every member and let it
// follow membership changes; keep keepalive probes and dial bounded so a dead member is
// noticed within seconds:
//
//	cli, err := clientv3.New(clientv3.Config{
//		Endpoints:            []string{"etcd-0:2379", "etcd-1:2379", "etcd-2:2379"},
//		AutoSyncInterval:     30 * time.Second, // pick up members added or replaced
//		DialTimeout:          5 * time.Second,  // a first connection that cannot be made fails Start clearly
//		DialKeepAliveTime:    10 * time.Second, // probe an idle connection…
//		DialKeepAliveTimeout: 3 * time.Second,  // …and give up on a member that does not answer
//	})
//
// AutoSyncInterval replaces the endpoints with each member's advertised client URLs
// (--advertise-client-urls). Set it only if those addresses reach the members from where the
// service runs; behind a load balancer, a port-forward or NAT, leave it 0 and list the
// endpoints yourself.
//
// Keep the instance TTL (registry.Config.TTL, lifecycle.Config.TTL; default 10 s) well above
// an election (etcd's default election timeout is 1 s) and above etcd's own request timeout
// (5 s + 2 × the election timeout): right after a leader change, a keepalive that reached a
// follower is forwarded to the new leader by hand, and on a loaded cluster its answer can take
// up to that long (3.6–5.5 s in the test cluster with the CPU oversubscribed, which cost every
// registration of a 2 s TTL; none of the default 10 s). A leader change then never costs a
// registration (TestLeaderKilledLosesNoCallsAndNoKey, against a 3-member cluster: 0 failed
// calls, no key deleted, a new leader within 40–130 ms). A quorum loss longer than the TTL
// loses the registrations on the instances' side (etcd's client gives up on the lease), but
// etcd keeps the records, since leases are extended when a leader takes over: consumers see no
// change, and every instance is registered again within tens of milliseconds of the quorum's
// return (TestQuorumLostLongerThanTheTTLLosesNoCalls: 5–50 ms, also after an 8 s loss with a
// 1 s TTL; the test uses 2 s).
//
// # Locking
//
// Registrar: a one-slot semaphore serializes etcd writes (held across requests bounded by
// RequestTimeout; waiting for it respects the caller's ctx); mu guards its fields and is never
// held across I/O or a callback; state changes are pushed to OnStateChange's queue (which
// never blocks) under mu. Watcher: the watch loop
// owns the set; mu guards only the last Snapshot. The resolver's state is owned by its
// Watcher's goroutine. List keeps nothing between calls and takes no lock.
package registry
