package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff yields delays Min, 2×Min, 4×Min … capped at Max, each with ±20 % jitter so that
// many instances retrying after one etcd outage do not retry in lockstep. Not safe for
// concurrent use; each retry loop owns one.
type Backoff struct {
	Min, Max time.Duration
	n        int
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	d := b.Min
	for i := 0; i < b.n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if d < b.Max {
		b.n++
	}
	jitter := (rand.Float64()*0.4 - 0.2) * float64(d)
	return d + time.Duration(jitter)
}

// Reset starts again from Min, after a success.
func (b *Backoff) Reset() { b.n = 0 }
