package balancer

import (
	"math"
	"sync/atomic"
	"time"
)

// endpointLoad is what the picks know of one endpoint's load: its requests outstanding and
// a moving average of its latency. Pick counts a request in (picked), the endpoint's Done
// callback counts it out (done). Lock-free: atomics only, shared by every picker of the
// endpoint.
//
// The latency is measured without timing each request (that would need per-request state, so
// an allocation per pick): by Little's law, an endpoint holding o requests while one
// completes after dt since its previous event (a completion, or a request arriving while it
// held none) spent o × dt per completion. With one request at a time that is exactly its
// latency; under steady load its mean is the mean latency.
type endpointLoad struct {
	n    atomic.Int64  // requests picked and not done
	last atomic.Int64  // clock (ns since loadEpoch) of the last completion, or of a pick that found n at 0
	ewma atomic.Uint64 // float64 bits: the latency average in ns; 0 until a request is done
}

// latencyWeight is the weight of each new latency sample in the moving average (about the
// last 10 completions count).
const latencyWeight = 0.1

// spikeCap bounds a sample at spikeCap times the average before it counts: a pause of the
// process (a collection, a descheduled thread) that makes one call of 0.2 ms take 10 ms moves
// the average by 1.3× at most, while a lasting slowdown still gets through, 1.3× per
// completion (10× in about 9).
const spikeCap = 4

// loadEpoch is the origin of endpointLoad's clock readings (monotonic).
var loadEpoch = time.Now()

func loadClock() int64 { return int64(time.Since(loadEpoch)) }

// picked counts a request in.
func (l *endpointLoad) picked() {
	if l.n.Add(1) == 1 {
		l.last.Store(loadClock()) // it was idle: its time since the last completion is not latency
	}
}

// done counts a request out and, if it was answered (sample: no error, bytes received),
// adds a latency sample. A failed call is no sample: an endpoint failing fast must not look
// fast; nor is a pick gRPC gives back unused (Done with an empty DoneInfo).
func (l *endpointLoad) done(sample bool) {
	now := loadClock()
	o := l.n.Add(-1) + 1
	dt := now - l.last.Swap(now)
	if !sample || o <= 0 || dt < 0 {
		return
	}
	x := float64(o) * float64(dt)
	for {
		old := l.ewma.Load()
		avg := math.Float64frombits(old)
		next := x
		if avg > 0 {
			next = avg + latencyWeight*(min(x, spikeCap*avg)-avg)
		}
		if l.ewma.CompareAndSwap(old, math.Float64bits(max(next, 1))) {
			return
		}
	}
}

// latency is the average latency in ns, 0 if no request is done yet.
func (l *endpointLoad) latency() float64 { return math.Float64frombits(l.ewma.Load()) }
