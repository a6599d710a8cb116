package release

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/attempt"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
	"github.com/switchyard-go/switchyard/internal/record"
	"github.com/switchyard-go/switchyard/registry"
)

// State is where a release plan is.
type State string

// The states of a plan. Running, Paused and Waiting are in progress: a runner drives them
// (or will, once started again). The others are final.
const (
	Running      State = "running"       // the runner advances the steps
	Paused       State = "paused"        // the step is held (the guard still watches): `release resume` goes on
	Waiting      State = "waiting"       // the last step passed, at_end: wait; `release promote` succeeds it
	Succeeded    State = "succeeded"     // every step passed: the new color has the last step's share
	SwitchedBack State = "switched-back" // a step failed: all traffic went back to the old color
	Aborted      State = "aborted"       // `release abort`: all traffic went back to the old color
)

// Final reports whether s is a final state: nothing drives the plan any more.
func (s State) Final() bool { return s == Succeeded || s == SwitchedBack || s == Aborted }

// Command is what a person asks of a plan's runner (Runner.Command, `switchyard release
// pause|resume|promote|abort`). It is written into the progress record, where the runner
// finds it within a poll.
type Command string

// The commands.
const (
	Pause   Command = "pause"   // hold the current step: it does not pass until resumed (the guard keeps watching)
	Resume  Command = "resume"  // go on after a pause
	Promote Command = "promote" // pass the current step now, without its hold or minimum; in state waiting, succeed
	Abort   Command = "abort"   // switch back now: all traffic to the old color, state aborted
)

// Progress is a plan's progress, the record at deploy.RolloutKey (versioned JSON). Status
// reads it; the runner writes it at every step, verdict and command, and its figures at most
// about once a second while a step is judged.
type Progress struct {
	record.Header
	Plan  Plan  `json:"plan"`
	State State `json:"state"`
	// Step is the index in Plan.Steps of the current step (the last one once the plan ended);
	// people read it one-based, as "step 2".
	Step int `json:"step"`
	// StepStarted is when the current step began (just before its rule was written).
	StepStarted time.Time `json:"step_started"`
	// FromBlue is the rule's blue percent before the current step's: a runner resuming the
	// plan finds the rule at it if the step's shift was never written, and writes it then.
	FromBlue float64 `json:"from_blue"`
	// JudgeableAt is when every app first had the minimum sample in this step (zero until
	// then): the step's hold counts from it.
	JudgeableAt time.Time `json:"judgeable_at,omitzero"`
	// Figures are the current step's figures per app, as of FiguresAt.
	Figures   []Figures `json:"figures,omitempty"`
	FiguresAt time.Time `json:"figures_at,omitzero"`
	// Note says, in a sentence, what the runner is waiting for ("step 1 (1 %): waiting for
	// 100 requests on blue: order has 37").
	Note string `json:"note,omitempty"`
	// Verdicts are the judgements so far, oldest first: one per step passed, promoted or
	// failed, and the abort.
	Verdicts []Verdict `json:"verdicts,omitempty"`
	// Owner is the runner driving the plan, e.g. "host-1/pid 4242"; it holds the lock while
	// it runs.
	Owner string `json:"owner,omitempty"`
	// Command is a command not yet carried out, with who asked and when, and its id (64
	// random bits in hex, one per Runner.Command call; absent in records of older versions).
	Command   Command   `json:"command,omitempty"`
	CommandBy string    `json:"command_by,omitempty"`
	CommandAt time.Time `json:"command_at,omitzero"`
	CommandID string    `json:"command_id,omitempty"`
	// LastCommand is the last command carried out (by the runner, or by Runner.Command
	// itself when no runner drove the plan), kept when the pending one is cleared: a Command
	// whose answer from etcd was lost finds its own id here (or pending in CommandID) and
	// reports done.
	LastCommand *CommandRecord `json:"last_command,omitempty"`
	Started     time.Time      `json:"started"`
	UpdatedAt   time.Time      `json:"updated_at"`
	// Op is the id of the runner's last write (64 random bits in hex): a write of the runner
	// whose answer from etcd was lost, sent again, finds it and knows it was applied. (Only
	// the runner, holding the lock, sets it; a command's write keeps it.)
	Op string `json:"op,omitempty"`
	// Runner is the runner that holds the channel's lock now, "" when none does. Status
	// fills it in; it is not stored.
	Runner string `json:"runner,omitempty"`

	rev int64 // the record's mod revision when read
}

// CommandRecord is a command carried out: what, its id, who asked and when, and when it was
// carried out.
type CommandRecord struct {
	Command Command   `json:"command"`
	ID      string    `json:"id,omitempty"`
	By      string    `json:"by"`
	At      time.Time `json:"at"`
	DoneAt  time.Time `json:"done_at"`
}

// carryOut clears p's pending command, keeping it as p.LastCommand, carried out now.
func (p *Progress) carryOut() {
	if p.Command != "" {
		p.LastCommand = &CommandRecord{Command: p.Command, ID: p.CommandID, By: p.CommandBy, At: p.CommandAt, DoneAt: time.Now()}
	}
	p.Command, p.CommandBy, p.CommandAt, p.CommandID = "", "", time.Time{}, ""
}

// Verdict is the judgement of a step: passed, promoted, failed (a breach), or aborted.
type Verdict struct {
	Step    int     `json:"step"` // index in Plan.Steps
	Percent float64 `json:"percent"`
	// Outcome is "passed", "promoted", "failed" or "aborted".
	Outcome string    `json:"outcome"`
	At      time.Time `json:"at"`
	// Figures are the apps' figures the verdict was made on.
	Figures []Figures `json:"figures,omitempty"`
	// Explanation is the verdict in a sentence, e.g. "step 2 (10 %) failed: order: blue
	// error rate 18.7 % over 2,114 requests vs green 0.1 % over 19,020; switched back in
	// 0.004 s".
	Explanation string `json:"explanation"`
	// SampleAt is when the failing app first had the minimum sample in the step (failed
	// only): the detection time runs from it (it is the first poll that saw the sample, so at
	// most one Config.Poll after the sample was there).
	SampleAt time.Time `json:"sample_at,omitzero"`
	// SwitchedBackAt is when the rule sending all traffic to the old color was written
	// (failed and aborted).
	SwitchedBackAt time.Time `json:"switched_back_at,omitzero"`
}

// Detection is how long it took from the minimum sample to the switch-back (failed
// verdicts; 0 otherwise).
func (v Verdict) Detection() time.Duration {
	if v.SampleAt.IsZero() || v.SwitchedBackAt.IsZero() {
		return 0
	}
	return v.SwitchedBackAt.Sub(v.SampleAt)
}

// Figures are one app's figures in a step: the new color's against the old one's since the
// step began.
type Figures struct {
	App         string  `json:"app"`
	NewRequests uint64  `json:"new_requests"`
	NewErrors   uint64  `json:"new_errors"`
	NewErrorPct float64 `json:"new_error_percent"`
	NewP99MS    float64 `json:"new_p99_ms,omitempty"`
	OldRequests uint64  `json:"old_requests"`
	OldErrors   uint64  `json:"old_errors"`
	OldErrorPct float64 `json:"old_error_percent"`
	OldP99MS    float64 `json:"old_p99_ms,omitempty"`
	// NoAnswer counts the app's instances whose /stats did not answer in the last poll
	// (their requests since then are missing from the figures).
	NoAnswer int `json:"no_answer,omitempty"`
}

// schemaVersion is the progress record's schema version.
const schemaVersion = 1

// ErrNoPlan: no plan has run in the channel.
var ErrNoPlan = errors.New("release: no release plan in channel")

// ErrMalformedProgress: the progress record cannot be read.
var ErrMalformedProgress = errors.New("release: malformed progress record")

func decodeProgress(data []byte, rev int64) (Progress, error) {
	var p Progress
	if err := record.Decode(data, schemaVersion, &p, false); err != nil {
		return Progress{}, record.Malformed(ErrMalformedProgress, "release: ", err)
	}
	p.rev = rev
	return p, nil
}

// readProgress reads channel's progress; ok is false when there is none.
func readProgress(ctx context.Context, cli *clientv3.Client, prefix, channel string) (p Progress, ok bool, err error) {
	resp, err := cli.Get(ctx, deploy.RolloutKey(prefix, channel))
	if err != nil {
		return Progress{}, false, etcdErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return Progress{}, false, nil
	}
	kv := resp.Kvs[0]
	p, err = decodeProgress(kv.Value, kv.ModRevision)
	return p, err == nil, err
}

// errChanged: the record changed since it was read (a command, or another writer).
var errChanged = errors.New("release: progress changed concurrently")

// writeProgress writes p, with a new write id (Op), if the record is still at p.rev (0:
// absent) and the lock is still the one created at lockRev, in attempts of call k. An attempt
// whose answer was lost is sent again; a swap that then fails finds the record with this
// write's id if an earlier attempt was applied (only the lock's holder writes Op, and a
// command's write keeps it). It returns p with its new revision.
func writeProgress(k *attempt.Call, cli *clientv3.Client, prefix string, p Progress, lockRev int64) (Progress, error) {
	p.V = schemaVersion
	p.UpdatedAt = time.Now()
	p.Runner = ""
	p.Op = newID()
	data, err := json.Marshal(p)
	if err != nil {
		return Progress{}, fmt.Errorf("release: encoding the progress: %w", err)
	}
	key := deploy.RolloutKey(prefix, p.Plan.Channel)
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(key), "=", p.rev),
		clientv3.Compare(clientv3.CreateRevision(deploy.RolloutLockKey(prefix, p.Plan.Channel)), "=", lockRev),
	}
	var resp *clientv3.TxnResponse
	err = k.Do(true, func(ctx context.Context) (err error) {
		resp, err = cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, string(data))).Else(clientv3.OpGet(key)).Commit()
		return err
	})
	if err != nil {
		return Progress{}, err
	}
	if resp.Succeeded {
		p.rev = resp.Header.Revision
		return p, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 && k.Sent() {
		if now, err := decodeProgress(kvs[0].Value, kvs[0].ModRevision); err == nil && now.Op == p.Op {
			return now, nil // an earlier attempt was applied; its answer was lost
		}
	}
	return Progress{}, errChanged
}

// holder is the value of the lock key: who drives the channel, since when.
type holder struct {
	Owner string    `json:"owner"`
	Since time.Time `json:"since"`
}

// ErrHeld: another runner drives the channel. The error names it.
var ErrHeld = errors.New("release: another runner drives the channel")

type heldError struct {
	channel string
	h       holder
}

func (e *heldError) Error() string {
	return fmt.Sprintf("release: channel %s is driven by runner %s since %s; wait for it, or abort it with `switchyard release abort %s`",
		e.channel, e.h.Owner, e.h.Since.Local().Format("15:04:05"), e.channel)
}
func (e *heldError) Is(target error) bool { return target == ErrHeld }

// lock takes channel's runner lock on lease, or says who holds it. It returns the lock's
// create revision, which every write of the runner is conditioned on.
func lock(ctx context.Context, cli *clientv3.Client, prefix, channel string, lease clientv3.LeaseID, owner string) (int64, error) {
	key := deploy.RolloutLockKey(prefix, channel)
	val, _ := json.Marshal(holder{Owner: owner, Since: time.Now()})
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return 0, etcdErr(ctx, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	return 0, heldBy(channel, resp.Responses[0].GetResponseRange().Kvs)
}

// heldBy is the ErrHeld of the lock key's value kvs.
func heldBy(channel string, kvs []*mvccpb.KeyValue) error {
	h := holder{Owner: "unknown"}
	if len(kvs) > 0 {
		_ = json.Unmarshal(kvs[0].Value, &h)
	}
	return &heldError{channel: channel, h: h}
}

// ErrEtcdUnavailable is wrapped when etcd did not answer within Config.RequestTimeout; it is
// registry.ErrEtcdUnavailable, the same value in every switchyard package.
var ErrEtcdUnavailable = registry.ErrEtcdUnavailable

func etcdErr(ctx context.Context, err error) error {
	err = kvwatch.Err(ctx, err)
	if errors.Is(err, ErrEtcdUnavailable) {
		return fmt.Errorf("release: %w", err)
	}
	return err
}
