package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/robfig/cron/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/record"
)

// DefaultRequestTimeout is Config.RequestTimeout's default.
const DefaultRequestTimeout = 5 * time.Second

// MisfirePolicy says what an executor does with a trigger that passed while an item it has
// just been given had no owner (during a reassignment).
type MisfirePolicy int

const (
	// RunOnce runs the item once for the last trigger that passed, unless someone did.
	RunOnce MisfirePolicy = iota
	// Skip waits for the next trigger.
	Skip
)

// Job is one sharded scheduled job.
type Job struct {
	// Name identifies the job in etcd: letters, digits, '.', '_', '-'. Required.
	Name string
	// Schedule is a cron expression with seconds ("*/5 * * * * *": every 5 s) or a
	// descriptor ("@hourly"), parsed by github.com/robfig/cron/v3 (which rounds "@every" to
	// whole seconds). Set Schedule or Every.
	Schedule string
	// Every is a fixed interval: triggers at every multiple of it on the wall clock, so all
	// executors agree on them. Sub-second intervals are fine. Set Schedule or Every.
	Every time.Duration
	// Items is the number of shard items, 0..Items-1. Required, > 0.
	Items int
	// Handler runs one item for one trigger. Its ctx ends at Timeout, or when the executor's
	// Stop gives up waiting (StopTimeout after Stop began, or Stop's ctx ending, whichever is
	// first). A handler should return soon after its ctx ends: Stop does not wait for it any
	// longer. Required.
	Handler func(ctx context.Context, item int) error
	// Timeout caps one run. Default: none.
	Timeout time.Duration
	// Misfire is what happens to a trigger missed during a reassignment. Default RunOnce.
	Misfire MisfirePolicy
}

// Config configures an Executor.
type Config struct {
	// Client is the etcd client. Required.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default "/switchyard".
	Prefix string
	// Job is the job this executor runs items of. Required.
	Job Job
	// ID identifies the executor (the instance id). Required.
	ID string
	// Drains tells the executor its instance's color and which colors of its app are
	// drained, and when that changes: in a service the lifecycle.Instance, or
	// deploy.ManualDrains to set them by hand. Nil: a colorless executor, never drained.
	Drains deploy.Drains
	// TTL is the executor's session TTL: a dead executor's items move after at most this.
	// Default 10 s.
	TTL time.Duration
	// StopTimeout caps how long Stop waits for runs in progress before it cancels their ctx.
	// Stop's ctx caps it too. Default 10 s.
	StopTimeout time.Duration
	// RequestTimeout caps every etcd request of the executor (granting and revoking leases,
	// registering, campaigning, claiming runs, writing and listing the assignment), each also
	// bounded by the ctx of the call that makes it. Default 5 s.
	RequestTimeout time.Duration
	// Logger, default slog.Default().
	Logger *slog.Logger
	// MeterProvider receives switchyard.job.runs (see the package doc). Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Clock tells the schedule's time: when triggers fire and how long ago the last one
	// passed (for RunOnce). Tests pass a fake clock to move time by hand. Leases (TTL, run
	// claims) keep etcd's time whatever the clock. Default clockwork.NewRealClock().
	Clock clockwork.Clock
}

var parser = cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func (c *Config) setDefaults() (cron.Schedule, error) {
	switch {
	case c.Client == nil:
		return nil, errors.New("job: Config.Client is nil; pass a connected *clientv3.Client")
	case c.Job.Handler == nil:
		return nil, errors.New("job: Job.Handler is nil")
	case c.Job.Items <= 0:
		return nil, fmt.Errorf("job: Job.Items is %d; a job needs at least one shard item", c.Job.Items)
	}
	if err := deploy.ValidateName("job", c.Job.Name); err != nil {
		return nil, fmt.Errorf("job: Job.Name: %w", err)
	}
	if err := deploy.ValidateName("id", c.ID); err != nil {
		return nil, fmt.Errorf("job: Config.ID: %w", err)
	}
	var sched cron.Schedule
	switch {
	case (c.Job.Schedule == "") == (c.Job.Every <= 0):
		return nil, errors.New("job: set exactly one of Job.Schedule (cron with seconds) and Job.Every (a positive interval)")
	case c.Job.Every > 0:
		sched = every(c.Job.Every)
	default:
		var err error
		if sched, err = parser.Parse(c.Job.Schedule); err != nil {
			return nil, fmt.Errorf("job: schedule %q: %w; use a cron expression with seconds (\"*/5 * * * * *\") or Job.Every", c.Job.Schedule, err)
		}
	}
	if c.Prefix == "" {
		c.Prefix = deploy.DefaultPrefix
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Second
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	return sched, nil
}

// every is a fixed-interval schedule aligned to the wall clock.
type every time.Duration

func (d every) Next(t time.Time) time.Time { return t.Truncate(time.Duration(d)).Add(time.Duration(d)) }

// The etcd keys of a job, under <prefix>/jobs/<job>/.

// schemaVersion is the "v" of the job records this package writes and reads.
const schemaVersion = 1

// executorRecord is stored at executors/<id>, attached to the executor's session lease.
type executorRecord struct {
	record.Header
	ID    string `json:"id"`
	Color string `json:"color"`
}

// assignment is stored at assignment, written only by the leader.
type assignment struct {
	record.Header
	Version int64            `json:"version"`
	Items   map[string][]int `json:"items"` // executor id → its items
}

// decodeAssignment decodes the value of the assignment key (name is what follows that key:
// "" for the key itself) for a job of n items. It refuses what no leader writes: another
// schema, a version below 1, an executor id that is not a valid name, an item outside
// 0..n-1 (a handler is promised only those) or one given to two executors. An assignment
// refused is skipped: the executor keeps the last good one, whose revision its claims then
// check, so it runs nothing on a refused one.
func decodeAssignment(name string, val []byte, n int) (assignment, error) {
	if name != "" {
		return assignment{}, fmt.Errorf("job: key %q next to the assignment is not the assignment; only <prefix>/jobs/<job>/assignment is read", "assignment"+name)
	}
	var a assignment
	if err := record.Decode(val, schemaVersion, &a, false); err != nil {
		return assignment{}, fmt.Errorf("job: malformed assignment: %w; the leader writes {\"v\":1,\"version\":N,\"items\":{\"<id>\":[0,4],…}}", err)
	}
	if a.Version < 1 {
		return assignment{}, fmt.Errorf("job: assignment version %d; a leader writes versions from 1", a.Version)
	}
	owner := make(map[int]string, n)
	for _, id := range slices.Sorted(maps.Keys(a.Items)) {
		if err := deploy.ValidateName("id", id); err != nil {
			return assignment{}, fmt.Errorf("job: assignment names an invalid executor id %s", badName(err))
		}
		for _, it := range a.Items[id] {
			if it < 0 || it >= n {
				return assignment{}, fmt.Errorf("job: assignment gives item %d to %s; this job has items 0..%d (do all its executors have the same Job.Items?)", it, id, n-1)
			}
			if other, ok := owner[it]; ok {
				return assignment{}, fmt.Errorf("job: assignment gives item %d to both %s and %s", it, other, id)
			}
			owner[it] = id
		}
	}
	return a, nil
}

// decodeExecutor decodes the record at executors/<id>; id is the key's last segment.
func decodeExecutor(id string, val []byte) (executorRecord, error) {
	var r executorRecord
	// Executors before schema versions wrote no "v": read that as version 1.
	if err := record.Decode(val, schemaVersion, &r, true); err != nil {
		return executorRecord{}, fmt.Errorf("job: malformed executor record at executors/%s: %w; executors write {\"v\":1,\"id\":\"<id>\",\"color\":\"blue\"|\"green\"|\"\"}", id, err)
	}
	if r.ID != id {
		return executorRecord{}, fmt.Errorf("job: executor record at executors/%s names executor %q; an executor's id is its key's last segment", id, r.ID)
	}
	if err := deploy.ValidateName("id", r.ID); err != nil {
		return executorRecord{}, fmt.Errorf("job: executor record at executors/%s: invalid executor id %s", id, badName(err))
	}
	if !deploy.Color(r.Color).Valid() {
		return executorRecord{}, fmt.Errorf("job: executor record at executors/%s has color %q; want \"blue\", \"green\" or \"\"", id, r.Color)
	}
	return r, nil
}

// badName says what is wrong with a name deploy.ValidateName refused.
func badName(err error) string {
	var fe *deploy.NameError
	if errors.As(err, &fe) {
		return fe.Value + " (it " + fe.Rule + ")"
	}
	return err.Error()
}
