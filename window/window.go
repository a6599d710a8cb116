package window

import (
	"math"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
)

// Seconds is how many one-second buckets a Window keeps.
const Seconds = 60

// Bounds are the upper bounds of the latency buckets, in milliseconds; the last bucket has
// no upper bound. Fixed, so that windows of different instances merge.
var Bounds = [...]float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}

// NumBuckets is the number of latency buckets: one per bound and one above the last.
const NumBuckets = len(Bounds) + 1

// Window is the last Seconds seconds of an instance's signals. The zero value is not usable;
// call New. Its methods are safe for concurrent use; the recording ones take no lock and
// allocate nothing.
type Window struct {
	now     func() time.Time
	buckets [Seconds]bucket
}

type bucket struct {
	sec       atomic.Int64 // the unix second the counts are for
	requests  atomic.Uint64
	errors    atomic.Uint64
	crossings atomic.Uint64
	latency   [NumBuckets]atomic.Uint64
	work      [deploy.NumWorkKinds]atomic.Uint64
	workFail  [deploy.NumWorkKinds]atomic.Uint64
}

// New returns an empty window on the given clock (nil: time.Now).
func New(now func() time.Time) *Window {
	if now == nil {
		now = time.Now
	}
	return &Window{now: now}
}

// current returns the bucket of the present second, clearing it first if it held an older one.
func (w *Window) current() *bucket {
	sec := w.now().Unix()
	b := &w.buckets[sec%Seconds]
	for {
		old := b.sec.Load()
		if old == sec {
			return b
		}
		if old < 0 { // another recorder is clearing it for second -old: wait for it
			runtime.Gosched()
			continue
		}
		if old > sec { // a late recorder after the clock moved on: count in the newer second
			return b
		}
		if b.sec.CompareAndSwap(old, -sec) { // claimed: clear, then publish the second
			b.requests.Store(0)
			b.errors.Store(0)
			b.crossings.Store(0)
			for i := range b.latency {
				b.latency[i].Store(0)
			}
			for i := range b.work {
				b.work[i].Store(0)
				b.workFail[i].Store(0)
			}
			b.sec.Store(sec)
			return b
		}
	}
}

// Request counts one request that took d; failed says it ended with an error.
func (w *Window) Request(d time.Duration, failed bool) {
	b := w.current()
	b.requests.Add(1)
	if failed {
		b.errors.Add(1)
	}
	b.latency[bucketOf(d)].Add(1)
}

// Crossing counts a request whose sticky decision named the other color than the instance's.
func (w *Window) Crossing() { w.current().crossings.Add(1) }

// DidWork counts one piece of work of kind k; failed says it failed. It makes a Window a
// deploy.Worker.
func (w *Window) DidWork(k deploy.WorkKind, failed bool) {
	if k < 0 || k >= deploy.NumWorkKinds {
		return
	}
	b := w.current()
	b.work[k].Add(1)
	if failed {
		b.workFail[k].Add(1)
	}
}

// bucketOf is the latency bucket of d.
func bucketOf(d time.Duration) int {
	ms := float64(d) / float64(time.Millisecond)
	for i, bound := range Bounds {
		if ms <= bound {
			return i
		}
	}
	return len(Bounds)
}

// Second is one second's counts.
type Second struct {
	At        int64              `json:"at"` // unix second
	Requests  uint64             `json:"requests"`
	Errors    uint64             `json:"errors"`
	Crossings uint64             `json:"crossings"`
	Latency   [NumBuckets]uint64 `json:"latency"` // per bucket of Bounds
	Messages  uint64             `json:"messages"`
	MsgErrors uint64             `json:"message_errors"`
	JobRuns   uint64             `json:"job_runs"`
	JobErrors uint64             `json:"job_errors"`
}

// Snapshot is the last Seconds seconds, oldest first; seconds with nothing recorded are
// left out.
type Snapshot struct {
	Now     int64    `json:"now"` // the unix second the snapshot was taken in
	Seconds []Second `json:"seconds"`
}

// Snapshot returns the seconds of the last minute, the current one included.
func (w *Window) Snapshot() Snapshot {
	now := w.now().Unix()
	s := Snapshot{Now: now}
	for at := now - Seconds + 1; at <= now; at++ {
		b := &w.buckets[at%Seconds]
		if b.sec.Load() != at {
			continue
		}
		sec := Second{At: at, Requests: b.requests.Load(), Errors: b.errors.Load(), Crossings: b.crossings.Load(),
			Messages: b.work[deploy.MessageWork].Load(), MsgErrors: b.workFail[deploy.MessageWork].Load(),
			JobRuns: b.work[deploy.JobWork].Load(), JobErrors: b.workFail[deploy.JobWork].Load()}
		for i := range b.latency {
			sec.Latency[i] = b.latency[i].Load()
		}
		if b.sec.Load() != at { // reused while read: that second is gone
			continue
		}
		s.Seconds = append(s.Seconds, sec)
	}
	return s
}

// Sum adds up the seconds of s from the last d before its Now (the current second counts as
// one), e.g. Sum(10*time.Second) for the last ten seconds.
func (s Snapshot) Sum(d time.Duration) Second {
	from := s.Now - int64(d/time.Second) + 1
	var t Second
	for _, sec := range s.Seconds {
		if sec.At >= from && sec.At <= s.Now {
			t.Add(sec)
		}
	}
	t.At = s.Now
	return t
}

// Add adds s's counts to t (its At is left as it is).
func (t *Second) Add(s Second) {
	t.Requests += s.Requests
	t.Errors += s.Errors
	t.Crossings += s.Crossings
	for i := range t.Latency {
		t.Latency[i] += s.Latency[i]
	}
	t.Messages += s.Messages
	t.MsgErrors += s.MsgErrors
	t.JobRuns += s.JobRuns
	t.JobErrors += s.JobErrors
}

// Merge adds up snapshots second by second (of several instances, say). Now is the latest.
func Merge(snaps ...Snapshot) Snapshot {
	var out Snapshot
	by := map[int64]*Second{}
	for _, s := range snaps {
		out.Now = max(out.Now, s.Now)
		for _, sec := range s.Seconds {
			t, ok := by[sec.At]
			if !ok {
				t = &Second{At: sec.At}
				by[sec.At] = t
			}
			t.Add(sec)
		}
	}
	for at := out.Now - Seconds + 1; at <= out.Now; at++ {
		if t, ok := by[at]; ok {
			out.Seconds = append(out.Seconds, *t)
		}
	}
	return out
}

// Quantile estimates the q-quantile (0 < q ≤ 1) of the latencies counted in t, in
// milliseconds, interpolating linearly inside a bucket (Prometheus' histogram_quantile does
// the same). It is NaN when t counts no request; a quantile in the last bucket is its lower
// bound.
func (t Second) Quantile(q float64) float64 {
	var total uint64
	for _, n := range t.Latency {
		total += n
	}
	if total == 0 || !(q > 0 && q <= 1) {
		return math.NaN()
	}
	rank := q * float64(total)
	var seen float64
	for i, n := range t.Latency {
		if n == 0 {
			continue
		}
		if seen+float64(n) >= rank {
			if i == len(Bounds) {
				return Bounds[len(Bounds)-1]
			}
			lo := 0.0
			if i > 0 {
				lo = Bounds[i-1]
			}
			return lo + (Bounds[i]-lo)*(rank-seen)/float64(n)
		}
		seen += float64(n)
	}
	return Bounds[len(Bounds)-1]
}
