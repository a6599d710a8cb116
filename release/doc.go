// Package release runs a release that guards itself: it moves a channel's traffic to the new
// color step by step (1 % → 10 % → 50 % → 100 %, say), judges every step on the signals the
// instances serve at /stats, and at the first breach sends all traffic back to the old color
// at once. `switchyard release run plan.yaml` is this package; Go callers use Runner.
//
// # The plan
//
// A Plan names the channel, the color that carries the new version (New), the steps (the new
// color's share and how long each is held), the Analysis that judges them, what a breach
// does (OnBreach: "switch-back", the only choice and the default) and what happens after the
// last step (AtEnd: "done", the default, succeeds; "wait" waits, still guarded, for a
// person's Promote). ParsePlan reads one from YAML, strictly (unknown or repeated fields are
// refused; every error says what to write instead):
//
//	channel: trade
//	new: blue
//	steps:
//	  - {percent: 1, hold: 30s}
//	  - {percent: 10, hold: 1m}
//	  - {percent: 50, hold: 1m}
//	  - {percent: 100, hold: 2m}
//	analysis:
//	  min_requests: 100            # default 100
//	  max_error_rate_increase: 1   # percentage points over the old color; default 1
//	  max_p99_ratio: 1.5           # new p99 / old p99; default 0: not judged
//	on_breach: switch-back         # the default
//	at_end: done                   # or wait; default done
//
// A step's percent is the new color's share: with new: blue the rule's blue percent is the
// step's percent, with new: green it is 100 minus it. The plan never closes the release: it
// ends with the new color at the last step's share (100: the old color is drained and can be
// redeployed); `switchyard channel finish` closes the release later. The channel's release
// must be open before the plan runs (`switchyard channel open`, then deploy the new color):
// Run refuses otherwise.
//
// # Judging a step
//
// Every Config.Poll (250 ms) the runner reads the channel's apps' instances and their /stats
// with a dashboard.Collector, and adds up, per app and color, the requests, errors (a
// server-side failure status, as lifecycle counts them) and latency buckets since the second
// the step began in (each instance's one-second buckets, the latest read of a second
// replacing the earlier ones: a hold may last longer than the window's minute). Per app, the
// new color's figures are judged against the old color's in the same window:
//
//   - fewer than MinRequests requests on the new color: not judged yet. The step does not
//     pass, however long it has lasted; Progress.Note says what it waits for ("waiting for
//     100 requests on blue: order has 37"). Never a pass for lack of data.
//   - new error % − old error % > MaxErrorRateIncrease: a breach. With no requests on the
//     old color, the new color's error % is judged against 0.
//   - MaxP99Ratio set and new p99 / old p99 > it (both colors with requests): a breach.
//
// A breach switches back at once, in the poll that found it: the rule gives the new color
// 0 %, and the plan ends switched-back. A step passes once every app has been judgeable for
// the step's hold (the hold counts from the moment the last app reached MinRequests) without
// a breach: the next step's rule is written. After the last step the plan succeeds, or
// waits for Promote (at_end: wait).
//
// # Verdicts
//
// Every verdict is a sentence with the figures that decided it, in Progress.Verdicts, in a
// log line, and in the reason of the rule write it caused (traffic's Rule.Reason, so every
// rule subscriber sees it: `switchyard watch`, the dashboard's timeline):
//
//	step 2 (10 %) failed: order: blue error rate 18.7 % over 2,114 requests vs green 0.1 % over 19,020 (more than 1 point above); switched back in 0.004 s
//	step 1 (1 %) passed: order: blue 0.1 % errors over 312 requests vs green 0.1 % over 30,118
//
// "switched back in" runs from the first poll that saw the failing app's minimum sample to
// the moment the switch-back rule was written (Verdict.Detection); the sample was complete
// at most one Poll before that poll.
//
// # Progress in etcd, one runner per channel
//
// The runner keeps the plan's Progress at deploy.RolloutKey (<prefix>/rollouts/<channel>):
// the plan, the state, the step, when it began and when it could be judged, the figures
// (rewritten about once a second), the verdicts, the owner and a pending command. A runner
// holds the channel's lock, deploy.RolloutLockKey, on a lease of Config.LockTTL (10 s)
// while it runs; a second runner is refused with an error (ErrHeld) naming the holder and
// since when. Every write of the runner is conditioned on its lock.
//
// A runner that stops (Ctrl-C, a crash: ctx ends, or its lease lapses) leaves the plan where
// it was. Run with the same plan resumes it at its step, not from the start: the step's
// start and the moment it could be judged are kept, so its hold goes on from there (a
// restart does not make a release longer, and the step's figures are read again from the
// instances' windows, which keep a minute). A different plan is refused while one is in
// progress. If the rule is not where the step put it, someone moved the traffic: Run
// refuses to resume rather than move it back.
//
// # Commands
//
// Runner.Command writes Pause, Resume, Promote or Abort into the record (a compare-and-swap);
// the runner watches the record and carries it out at once, and Command returns when it has:
//
//   - pause: the step does not pass until resumed; the guard keeps judging it (a breach
//     still switches back). The hold keeps counting: a step paused past its hold passes at
//     the first poll after resume.
//   - resume: go on.
//   - promote: pass the current step now, without its hold or minimum sample (a person's
//     call; the verdict says "promoted by"); at the end of an at_end: wait plan, succeed.
//   - abort: switch back now, state aborted.
//
// Without a runner, pause and resume change the recorded state for the next runner, abort
// switches back itself (under the lock), and promote is refused (ErrNoRunner). The same
// command already pending (another person's) is waited for, not written again; a different
// one pending is refused, naming who asked it and when.
//
// # Commands across a leader change
//
// Command (the wait for the runner included) takes ctx's time, or RequestTimeout when ctx
// has none; Status too. Each etcd request is made in attempts within it, as traffic's
// Controller does: the first 500 ms, each next twice as long up to RequestTimeout, with a
// pause of 50 ms doubling to 500 ms between them; an attempt etcd did not answer (a write
// forwarded to a leader that just died, a member without a leader) is made again. The wait
// for the runner is a watch made again from the last revision seen when etcd drops it.
//
// Every command carries an id (Progress.CommandID, 64 random bits), and the runner keeps the
// command it carried out, with that id and when, as Progress.LastCommand. So a command whose
// write etcd applied but whose answer was lost, sent again, recognises itself: pending
// (CommandID), carried out (LastCommand), or, when other writes followed, as the first change
// of the record in etcd's history after its read (the write is a compare-and-swap on that
// read, so it can only be the first) — and it goes on as if the answer had come, waiting for
// the runner. If instead another command was written in between, the error is an
// *OtherCommandError naming it (what, who, when asked, when carried out). If etcd does not
// answer in time, the error wraps ErrEtcdUnavailable, says what was tried, and whether the
// command may have been recorded (then it wraps ErrOutcomeUnknown). If etcd answers but the
// runner does not carry the command out in time, the error says so and wraps neither; the
// command stays recorded for it.
//
// The runner's own reads and writes of the record are made in the same attempts within
// RequestTimeout; each write carries a write id (Progress.Op), so one whose answer was lost
// is recognised when sent again and the runner goes on (before, it stopped with "etcd
// unavailable").
//
// Measured on a 3-member etcdtest cluster, its leader killed right before each `switchyard
// release pause|resume` (runner polling every 50 ms, both on clients given every endpoint):
// the command was carried out and answered in 45–830 ms (30 of 30; median about 110 ms; the
// slow ones are a write that waited out its first 500 ms attempt). With the command's requests
// in attempts but the runner's still single 5 s requests, about 1 run in 6 failed after 5 s,
// the runner stuck in a request to the dead leader. Before, on the old code, a pause whose
// answer was lost returned "etcd unavailable" after 4 ms, and its retry "is paused, not
// running: nothing to pause".
//
// States: running, paused, waiting (for promote at the end), succeeded, switched-back,
// aborted. Run returns nil when the plan succeeded, an error wrapping ErrSwitchedBack whose
// message is the verdict when a step failed, ErrAborted after an abort.
//
// Do not shift a channel by hand while a plan drives it: pause or abort the plan first.
package release
