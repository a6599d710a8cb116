package window_test

import (
	"fmt"
	"time"

	"github.com/switchyard-go/switchyard/window"
)

// Two instances' windows merge into one view: the latency buckets are the same everywhere.
func Example() {
	now := func() time.Time { return time.Unix(1_000_000, 0) }
	blue1, blue2 := window.New(now), window.New(now)
	for range 95 {
		blue1.Request(4*time.Millisecond, false)
	}
	for range 5 {
		blue2.Request(300*time.Millisecond, true)
	}
	last10s := window.Merge(blue1.Snapshot(), blue2.Snapshot()).Sum(10 * time.Second)
	fmt.Printf("%d requests, %.0f%% errors, p50 %.1f ms, p99 %.0f ms\n", last10s.Requests,
		100*float64(last10s.Errors)/float64(last10s.Requests), last10s.Quantile(0.5), last10s.Quantile(0.99))
	// Output: 100 requests, 5% errors, p50 3.6 ms, p99 440 ms
}
