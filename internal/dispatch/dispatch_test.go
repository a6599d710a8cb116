package dispatch_test

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/dispatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOrderedNonBlockingAndPanicSafe(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var got []int
	var panics []any
	q := dispatch.Start(func(v int) {
		if v == 0 {
			<-release // a stuck callback
		}
		if v == 3 {
			panic("boom")
		}
		mu.Lock()
		got = append(got, v)
		mu.Unlock()
	}, func(p any) { panics = append(panics, p) })

	begin := time.Now()
	for i := 0; i < 1000; i++ {
		q.Push(i) // must not block although the callback is stuck on 0
	}
	if d := time.Since(begin); d > time.Second {
		t.Fatalf("Push blocked for %v behind a stuck callback", d)
	}
	close(release)
	q.Close() // delivers everything queued
	if len(got) != 999 || got[0] != 0 || got[2] != 2 || got[3] != 4 || got[998] != 999 {
		t.Fatalf("delivered %d values, out of order or incomplete: %v…", len(got), got[:5])
	}
	if len(panics) != 1 || panics[0] != "boom" {
		t.Fatalf("panics = %v, want one recovered \"boom\"", panics)
	}
	q.Push(5) // after Close: ignored, no panic
}

func TestStopFromTheCallbackDropsTheRest(t *testing.T) {
	var q *dispatch.Queue[int]
	var n int
	ready := make(chan struct{})
	q = dispatch.Start(func(v int) {
		<-ready
		n++
		q.Stop()
	}, nil)
	for i := 0; i < 10; i++ {
		q.Push(i)
	}
	close(ready)
	<-q.Done()
	if n != 1 {
		t.Fatalf("callback ran %d times after Stop, want 1", n)
	}
}
