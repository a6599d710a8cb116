// Package job runs sharded scheduled jobs that never run on a drained executor (DESIGN.md
// "Job isolation"), in ElasticJob's model — a leader assigns shard items to executors — with
// etcd in place of ZooKeeper, and aware of blue/green drains.
//
// A Job has a name, a schedule (a cron expression with seconds, parsed by
// github.com/robfig/cron/v3, or a fixed interval, Every), N shard items and a handler called
// as handler(ctx, item). Keys, under <prefix>/jobs/<job>/:
//
//	executors/<id>        each executor, on its session lease (TTL default 10 s)
//	leader                the election (etcd concurrency); leadership ends with the session
//	assignment            {"v":1,"version":N,"items":{"<id>":[0,4],…}}, written by the
//	                      leader only while its election key is still its own
//	runs/<item>/<trigger> one claim per item and trigger
//
// The leader assigns items 0..N-1 round-robin over the executors whose color is not drained,
// and rewrites the assignment as soon as an executor joins or leaves or a drain changes (rule
// events reach every executor through lifecycle). At each trigger, an executor claims each of
// its items with a transaction that succeeds only if nobody claimed (item, trigger) and the
// assignment it acts on is still the current one: it never starts an item it no longer owns,
// and no item runs twice for one trigger. An executor of a drained color starts nothing, from
// the moment it hears of the drain. A run in progress finishes, or is cancelled at
// Job.Timeout.
//
// Misfires: with RunOnce (the default), an executor whose assignment changes runs its items
// for the last trigger that passed, where nobody did; with Skip it waits for the next one.
//
// Executor is a lifecycle component: Stop waits for runs in progress (at most StopTimeout),
// then closes its session, so its registration and leadership go at once and the leader
// reassigns its items now rather than after the TTL. An executor that dies without stopping
// loses its items when its lease expires. One that was cut off from etcd for longer than its
// TTL makes a new session and registers again by itself once etcd answers.
//
// The schedule's time comes from Config.Clock (default the real clock); leases are etcd's
// time whatever the clock. The tests move a fake clock from trigger to trigger and check, in
// etcd's claims and the handler calls (4 executors, 2 blue and 2 green, 8 items): every item
// runs at every trigger, on the executor the assignment names; from the first trigger after
// the executors' rule client shows blue drained, every item runs on green and no blue
// executor runs anything, even before the leader has reassigned; none is lost across the
// undrain; a leader's Stop removes its registration and election key at once; a killed
// executor's items run on the others once its lease expires, for the trigger that passed
// while they had no owner (RunOnce) and after; every item runs again once etcd is back from
// a restart, or a partition, longer than the TTL; no item runs twice for one trigger.
package job
