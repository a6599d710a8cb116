package balancer

import (
	"math"
	"time"
)

// The sampler measures each endpoint's latency for choose, in windows, by Little's law: over
// a window, the mean latency of the calls an endpoint answered is the area under its
// requests-outstanding curve divided by the calls it answered. Every sampleEvery it adds
// outstanding × Δt to each endpoint's area (Δt read from the clock, so a late tick still
// counts the time it was late); every windowTicks ticks (200 ms) it closes the window of each endpoint that
// answered at least minAnswered calls in it and publishes
//
//	latency = (area + keep × area before) / (answered + keep × answered before)
//
// (the sums of the earlier windows decay by keep at each, so the latency follows about the
// last two windows). An endpoint that answered fewer carries its window on into the next, and
// keeps its last latency meanwhile; one never measured has none, and gets its first at the
// first tick by which it has answered minAnswered calls (a new instance is measured soon). The samples are exact
// counts taken at the ticks, and a window's figure rests on many of them and on at least
// minAnswered calls, so a loaded CPU that delays calls and ticks alike moves it little:
// no per-call timing, no clock read in Pick or Done.
//
// One timer per balancer. It runs while calls go on: a call that ends (Done) while it is
// stopped starts it, and it stops after idleTicks ticks in a row that find no call
// outstanding on any endpoint (a window begun then is dropped), and at Close.
//
// Each tick walks the balancer's endpoints under its lock (2 to 3 ns each: BenchmarkSample).
// Above walkPerTick endpoints the ticks and windows stretch in proportion, so a ClientConn's
// sampler takes at most about 0.15 ms of CPU per second (0.1 ms at 1,000 endpoints, 0.13 ms
// at 10,000, ticking every 200 ms), and holds the lock at most ~30 µs at a time.
const (
	sampleEvery = 20 * time.Millisecond
	windowTicks = 10
	walkPerTick = 1000
	minAnswered = 8
	keep        = 0.5
	idleTicks   = 10
)

// window is an endpoint's share of the sampler's work; guarded by wBalancer.mu.
type window struct {
	area     float64 // outstanding × ns, since the window began
	seen     int64   // answered when the window began
	sumArea  float64 // the earlier windows' areas, decayed by keep at each window
	sumCalls float64 // the earlier windows' answered calls, likewise
}

// sampler is the balancer's; guarded by wBalancer.mu, except running.
type sampler struct {
	last, start time.Time // the last tick; when the current window began
	idle        int       // ticks in a row that found nothing outstanding
}

// tickEvery is the sampler's period over n endpoints: sampleEvery, stretched above
// walkPerTick endpoints.
func tickEvery(n int) time.Duration {
	return sampleEvery * time.Duration(max(1, (n+walkPerTick-1)/walkPerTick))
}

// wakeSampler starts the sampler if it is not running; called from Done callbacks (an atomic
// load when it runs).
func (b *wBalancer) wakeSampler() {
	if b.sampling.Load() || !b.sampling.CompareAndSwap(false, true) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return // sampling stays set: nothing starts it again
	}
	now := b.clock.Now()
	b.smp = sampler{last: now, start: now}
	for _, e := range b.list {
		e.win.area, e.win.seen = 0, e.load.answered.Load()
	}
	b.smpTimer = b.clock.AfterFunc(tickEvery(len(b.list)), b.sample)
}

// sample is the sampler's tick.
func (b *wBalancer) sample() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.sampleLocked(b.clock.Now()) {
		b.smp.idle = 0
	} else if b.smp.idle++; b.smp.idle >= idleTicks {
		b.smpTimer = nil
		b.sampling.Store(false) // the next Done starts it again
		return
	}
	b.smpTimer = b.clock.AfterFunc(tickEvery(len(b.list)), b.sample)
}

// sampleLocked adds each endpoint's outstanding × the time since the last tick to its
// window, and at the end of a window closes each endpoint's (closeWindow) and clears old
// failure marks (clearFailure). It reports whether any endpoint had a call outstanding.
// Needs mu.
func (b *wBalancer) sampleLocked(now time.Time) (busy bool) {
	dt := float64(now.Sub(b.smp.last))
	b.smp.last = now
	closing := now.Sub(b.smp.start) >= windowTicks*tickEvery(len(b.list))
	if closing {
		b.smp.start = now
	}
	for _, e := range b.list {
		l := &e.load
		if o := l.outstanding.Load(); o > 0 {
			busy = true
			e.win.area += float64(o) * dt
		}
		if closing || l.latency.Load() == 0 { // a new endpoint: as soon as it has enough
			l.closeWindow(&e.win)
		}
		if closing {
			l.clearFailure(b.loadClock)
		}
	}
	return busy
}

// closeWindow ends the endpoint's window w if it answered at least minAnswered calls in it,
// and publishes its latency. Needs wBalancer.mu.
func (l *endpointLoad) closeWindow(w *window) {
	n := l.answered.Load()
	calls := n - w.seen
	if calls < minAnswered {
		return // carried on into the next window
	}
	w.sumArea = keep*w.sumArea + w.area
	w.sumCalls = keep*w.sumCalls + float64(calls)
	w.area, w.seen = 0, n
	if lat := w.sumArea / w.sumCalls; lat > 0 {
		l.latency.Store(math.Float64bits(lat))
	}
}

// clearFailure clears the endpoint's failure mark if its last sick failure was failureMemory
// ago or more: a first candidate that failed hands its picks to a second, so none of its
// calls may end to clear it (endpointLoad.done).
func (l *endpointLoad) clearFailure(clock *loadClock) {
	if f := l.failedAt.Load(); f != 0 && clock.now()-f >= int64(failureMemory) {
		l.failedAt.CompareAndSwap(f, 0) // not if it failed again meanwhile
	}
}
