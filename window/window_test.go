package window_test

import (
	"encoding/json"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/window"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable clock for the window.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) set(sec int64)       { c.ns.Store(sec * int64(time.Second)) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }
func newClock(sec int64) *clock      { c := &clock{}; c.set(sec); return c }

func TestCountsPerSecondAndForgetsAfterAMinute(t *testing.T) {
	c := newClock(1000)
	w := window.New(c.now)
	w.Request(3*time.Millisecond, false)
	w.Request(40*time.Millisecond, true)
	w.Crossing()
	w.DidWork(deploy.MessageWork, false)
	w.DidWork(deploy.JobWork, true)
	c.add(time.Second)
	w.Request(7*time.Second, false) // above the last bound
	s := w.Snapshot()
	if s.Now != 1001 || len(s.Seconds) != 2 {
		t.Fatalf("snapshot %+v; want seconds 1000 and 1001", s)
	}
	first := s.Seconds[0]
	if first.At != 1000 || first.Requests != 2 || first.Errors != 1 || first.Crossings != 1 ||
		first.Messages != 1 || first.JobRuns != 1 || first.JobErrors != 1 || first.Latency[2] != 1 || first.Latency[5] != 1 {
		t.Fatalf("second 1000: %+v", first)
	}
	if last := s.Seconds[1]; last.Latency[window.NumBuckets-1] != 1 {
		t.Fatalf("a 7 s request is not in the last bucket: %+v", last)
	}
	if sum := s.Sum(10 * time.Second); sum.Requests != 3 || sum.Errors != 1 {
		t.Fatalf("sum of the last 10 s: %+v", sum)
	}
	if sum := s.Sum(time.Second); sum.Requests != 1 {
		t.Fatalf("sum of the current second: %+v", sum)
	}
	// 60 s later the bucket of second 1000 is reused for 1060: the old counts are gone.
	c.set(1060)
	w.Request(time.Millisecond, false)
	s = w.Snapshot()
	if len(s.Seconds) != 2 || s.Seconds[0].At != 1001 || s.Seconds[1].At != 1060 || s.Seconds[1].Requests != 1 {
		t.Fatalf("after a minute: %+v", s.Seconds)
	}
	c.set(2000)
	if s := w.Snapshot(); len(s.Seconds) != 0 {
		t.Fatalf("a quiet minute later: %+v", s.Seconds)
	}
}

func TestMergeAndQuantile(t *testing.T) {
	c := newClock(500)
	a, b := window.New(c.now), window.New(c.now)
	for range 90 {
		a.Request(1500*time.Microsecond, false) // bucket (1, 2] ms
	}
	for range 10 {
		b.Request(150*time.Millisecond, true) // bucket (100, 200] ms
	}
	m := window.Merge(a.Snapshot(), b.Snapshot())
	sum := m.Sum(window.Seconds * time.Second)
	if sum.Requests != 100 || sum.Errors != 10 {
		t.Fatalf("merged %+v", sum)
	}
	if p50 := sum.Quantile(0.5); p50 <= 1 || p50 > 2 {
		t.Errorf("p50 %.2f ms, want in (1, 2]", p50)
	}
	if p99 := sum.Quantile(0.99); p99 <= 100 || p99 > 200 {
		t.Errorf("p99 %.2f ms, want in (100, 200]", p99)
	}
	if q := (window.Second{}).Quantile(0.5); !math.IsNaN(q) {
		t.Errorf("quantile of nothing: %v, want NaN", q)
	}
	js, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back window.Snapshot
	if err := json.Unmarshal(js, &back); err != nil || back.Sum(time.Minute).Requests != 100 {
		t.Fatalf("JSON round trip: %v %s", err, js)
	}
}

// Many recorders across second boundaries: nothing counted is lost or double counted while
// the seconds are within the window.
func TestConcurrentRecordersAcrossSeconds(t *testing.T) {
	c := newClock(100)
	w := window.New(c.now)
	const recorders, each = 4, 2000
	var wg sync.WaitGroup
	for range recorders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				w.Request(time.Millisecond, i%10 == 0)
			}
		}()
	}
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go func() { // move the clock a second at a time while they record, 20 s in all
		defer close(ticked)
		for range 20 {
			select {
			case <-stop:
				return
			default:
			}
			c.add(time.Second)
		}
	}()
	wg.Wait()
	close(stop)
	<-ticked
	sum := w.Snapshot().Sum(window.Seconds * time.Second)
	if sum.Requests != recorders*each || sum.Errors != recorders*each/10 {
		t.Fatalf("counted %d requests and %d errors; want %d and %d", sum.Requests, sum.Errors, recorders*each, recorders*each/10)
	}
}

func TestRecordingAllocatesNothing(t *testing.T) {
	w := window.New(nil)
	if n := testing.AllocsPerRun(1000, func() {
		w.Request(time.Millisecond, false)
		w.Crossing()
		w.DidWork(deploy.MessageWork, false)
	}); n != 0 {
		t.Fatalf("recording allocates %v times", n)
	}
}

func BenchmarkRequest(b *testing.B) {
	w := window.New(nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Request(time.Millisecond, false)
		}
	})
}
