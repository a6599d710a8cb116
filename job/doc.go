// Package job runs sharded scheduled jobs that never run on a drained executor (DESIGN.md
// "Job isolation"), in ElasticJob's model — a leader assigns shard items to executors — with
// etcd in place of ZooKeeper, and aware of blue/green drains.
//
// A Job has a name, a schedule (a cron expression with seconds, parsed by
// github.com/robfig/cron/v3, or a fixed interval, Every), N shard items and a handler called
// as handler(ctx, item). Keys, under <prefix>/jobs/<job>/:
//
//	executors/<id>        {"v":1,"id":"<id>","color":"blue"}, each executor, on its session lease
//	                      (TTL default 10 s; a record without "v", from an older executor, reads as v 1)
//	leader/<lease>        the election (etcd concurrency's layout); leadership ends with the session
//	assignment            {"v":1,"version":N,"items":{"<id>":[0,4],…}}, written by the
//	                      leader only while its election key is still its own
//	runs/<item>/<trigger> one claim per item and trigger
//
// The leader assigns items 0..N-1 round-robin over the executors whose color is not drained,
// and rewrites the assignment as soon as an executor joins or leaves or a drain changes. At
// each trigger, an executor claims each of its items with a transaction that succeeds only if
// nobody claimed (item, trigger) and the assignment it acts on is still the current one: it
// never starts an item it no longer owns, and no item runs twice for one trigger. An executor
// of a drained color starts nothing, from the moment it hears of the drain. A run in progress
// finishes, or is cancelled at Job.Timeout.
//
// # Drains and lifecycle
//
// An executor learns from Config.Drains (a deploy.Drains) its color, which colors of its app
// are drained, and when that changes. In a service that is the lifecycle.Instance, which
// reads them from the app's traffic rule; append the executor to it, so that it starts once
// the instance is registered and stops, after its runs, while the instance drains:
//
//	ex, err := job.NewExecutor(job.Config{Client: cli, ID: id, Drains: inst, Job: settle})
//	…
//	inst.Append(ex)
//
// deploy.ManualDrains sets them by hand (a test, or a job outside a service; Example_drains
// does). With Drains nil the executor is colorless (deploy.None) and never drained.
//
// What is under the prefix is outside input: anyone who may write there can put anything.
// An executor refuses an assignment no leader writes (another schema, a version below 1, an
// invalid executor id, an item outside 0..Items-1 — so a handler only ever sees items of its
// job, and all executors of a job must have the same Items — or an item given twice) and an
// executor record whose id is not its key's or whose color is not blue, green or none; it
// logs what was wrong and keeps the last good one. Claims check the assignment's revision, so
// nothing runs on a refused or deleted assignment: the leader sees it and writes its own again
// at once. FuzzDecodeAssignment and FuzzDecodeExecutor check both decoders (their seeds run in
// the normal suite).
//
// Misfires: with RunOnce (the default), an executor whose assignment changes runs its items
// for the last trigger that passed, where nobody did; with Skip it waits for the next one.
//
// # Metrics and work
//
// An executor counts, on Config.MeterProvider (default otel.GetMeterProvider();
// instrumentation scope github.com/switchyard-go/switchyard/job), the runs its handler
// finished:
//
//	switchyard.job.runs  Int64Counter {run}
//	    switchyard.job      Job.Name
//	    switchyard.color    the executor's color ("" colorless)
//	    switchyard.outcome  "ok", or "error" when the handler returned an error (a run cut
//	                        at Job.Timeout or at Stop's deadline is an error if the handler
//	                        says so)
//
// A run is counted when its handler returns, before Stop can return. The attribute sets are
// built once, in NewExecutor. When Config.Drains also implements deploy.Worker (as
// lifecycle's Instance does), the executor tells it of each run: DidWork(deploy.JobWork,
// failed), so the instance's signals (its /stats window, the dashboard) show the job work per
// color.
//
// # Stop contract
//
// Executor is a lifecycle component and keeps the Stop contract of switchyard's components,
// written out in package mq's doc, with StopTimeout as a second deadline:
//
//   - Runs in progress finish, with a live ctx, or their ctx is cancelled at Stop's deadline:
//     when StopTimeout (default 10 s) has passed since Stop was called or Stop's ctx ends,
//     whichever comes first. No run starts once Stop is called.
//   - Stop returns by its ctx's deadline, whatever etcd does: nil when every run finished and
//     the session was revoked, else an error saying what was cut (wrapping ctx's error when
//     ctx ended).
//   - Nothing leaks: once the handlers have returned, no goroutine, lease keep-alive or watch
//     of the executor is left. A handler must return once its ctx is cancelled; until it
//     does, its goroutine stays.
//
// After the runs, Stop revokes the executor's session, so its registration and leadership go
// at once and the leader reassigns its items now rather than after the TTL. If etcd does not
// answer (an outage) by ctx's end or within RequestTimeout, Stop returns anyway, with an error
// saying the registration goes when the TTL runs out. A ctx of StopTimeout + RequestTimeout
// or more leaves time for both. An executor that dies without stopping loses its items when
// its lease expires. One that was cut off from etcd for longer than its TTL makes a new
// session and registers again by itself once etcd answers.
//
// Every etcd request of an executor carries a ctx capped by Config.RequestTimeout (default
// 5 s) and by the call or loop that makes it, which Stop ends first: Start gives up by its
// ctx's end or after RequestTimeout per request, leaving in etcd only leases that expire, and
// nothing waits for etcd beyond that. (Its sessions and election are its own, not etcd's
// concurrency package's, whose lease grant, revoke and resignation run on the client's
// context, so a Stop during an outage would wait for etcd to come back.)
//
// The schedule's time comes from Config.Clock (default the real clock); leases are etcd's
// time whatever the clock. The tests move a fake clock from trigger to trigger and check, in
// etcd's claims and the handler calls (4 executors, 2 blue and 2 green, 8 items): every item
// runs at every trigger, on the executor the assignment names; from the first trigger after
// the executors' drains show blue drained, every item runs on green and no blue
// executor runs anything, even before the leader has reassigned; none is lost across the
// undrain; a leader's Stop removes its registration and election key at once; a killed
// executor's items run on the others once its lease expires, for the trigger that passed
// while they had no owner (RunOnce) and after; every item runs again once etcd is back from
// a restart, or a partition, longer than the TTL; no item runs twice for one trigger. Stop
// while etcd is cut off returns by its ctx's deadline, with the runs in progress cancelled;
// runs that finish in time finish with their ctx alive; Start while etcd is cut off gives up
// by its ctx's deadline or RequestTimeout; a garbage, out-of-range or deleted assignment
// written by someone else is replaced by the leader and every item keeps running.
package job
