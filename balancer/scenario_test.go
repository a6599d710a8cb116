package balancer_test

// The scenarios of issue 18 (slow instances get less traffic), measured with real greeter
// servers over loopback, registered in a real embedded etcd and reached through the
// registry's resolver, against grpc's round_robin and switchyard_weighted on the same kind of
// fleet:
//
//   - Cold instance: 3 instances answer in 1 ms under 16 closed-loop callers; a new one
//     registers with the default warmup (lifecycle.DefaultWarmup, 30 s) and answers in 30 ms
//     for its first 3 s, then in 1 ms. The release window runs from its registration (its
//     StartTime) to the end of its cold period + 2 s; its p99 and throughput are compared with
//     the steady ones measured just before.
//   - Slow instance: one of 4 instances (2 ms) becomes 10× slower mid-run under 16 callers;
//     its share of the calls started in each 250 ms after the slowdown, and how long until that
//     share stays within 2× its capacity share ((1/10)/(3+1/10) = 3.2 %).
//   - Kill during warmup: 2 old instances and 2 replacements 3 s into their 30 s warmup ramp
//     (5 ms handlers, 16 callers, no retry policy); an old one is stopped abruptly
//     (grpc.Server.Stop: its connections close, its calls in flight are cut). The calls that
//     fail, and the victim's fraction of the calls in flight on the servers just before the
//     kill (the servers' concurrency gauges, averaged over 200 ms: far less noisy than the
//     failures, which it predicts).
//
// The full-length runs are benchmarks reporting the figures (the ns/op is meaningless and set
// to 0):
//
//	go test -run '^$' -bench 'ColdInstance|SlowInstance|KillDuringWarmup' -benchtime 1x ./balancer/
//
// (BenchmarkKillDuringWarmup makes -scenario.rounds kills per policy, interleaved.) The
// default run keeps scaled-down versions with assertions that hold with the CPU
// oversubscribed and the race detector on.

import (
	"context"
	"flag"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// defaultWarmup is lifecycle.DefaultWarmup, the Warmup every instance registers with unless
// configured otherwise (not imported: lifecycle is far above this package).
const defaultWarmup = 30 * time.Second

var killRounds = flag.Int("scenario.rounds", 20, "kills per policy in BenchmarkKillDuringWarmup")

// The policies the scenarios compare.
const (
	policyRoundRobin = "round_robin" // grpc's, by service config
	policySwitchyard = "switchyard"  // switchyard_weighted, the resolver's default
	// switchyard_weighted with {"loadAware": false}: the weights alone, as before issue 18
	policyWeightsOnly = "weights-only"
)

var scenarioPolicies = []string{policyRoundRobin, policySwitchyard}

const roundRobinServiceConfig = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// dialPolicy returns a connection to switchyard:///greeter through the registry's resolver
// (so both policies see the same servers the same way) with the named policy, connecting.
func (c *cluster) dialPolicy(policy string) *grpc.ClientConn {
	c.t.Helper()
	switch policy {
	case policyRoundRobin:
		return c.conn(func(rc *registry.ResolverConfig) { rc.ServiceConfig = roundRobinServiceConfig })
	case policySwitchyard:
		return c.conn()
	case policyWeightsOnly:
		return c.conn(func(rc *registry.ResolverConfig) {
			rc.ServiceConfig = `{"loadBalancingConfig":[{"switchyard_weighted":{"loadAware":false}}]}`
		})
	}
	c.t.Fatalf("no policy %q", policy)
	return nil
}

// callRec is one call of a load run; times are offsets from the load's origin.
type callRec struct {
	start, end time.Duration
	inst       string // the answering instance; "" when the call failed
}

func (r callRec) failed() bool { return r.inst == "" }

// load is a set of closed-loop callers: each makes one call after another, with no retry
// (no WaitForReady, no retry policy), until stopped.
type load struct {
	origin time.Time
	stopc  chan struct{}
	wg     sync.WaitGroup
	recs   [][]callRec    // per caller, read only after wg.Wait
	last   []atomic.Int64 // per caller: the start offset of its last finished call, -1 before
}

func startLoad(c greeterpb.GreeterClient, callers int) *load {
	l := &load{origin: time.Now(), stopc: make(chan struct{}), recs: make([][]callRec, callers),
		last: make([]atomic.Int64, callers)}
	for i := range callers {
		l.last[i].Store(-1)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stopc:
					return
				default:
				}
				start := time.Since(l.origin)
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{})
				cancel()
				r := callRec{start: start, end: time.Since(l.origin)}
				if err == nil {
					r.inst = resp.GetInstance()
				}
				l.recs[i] = append(l.recs[i], r)
				l.last[i].Store(int64(start))
			}
		}()
	}
	return l
}

// now is the offset from the load's origin.
func (l *load) now() time.Duration { return time.Since(l.origin) }

// runFor lets the load run for d: a measurement span, not a wait for an event.
func (l *load) runFor(d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	<-tm.C
}

// allStartedSince reports whether every caller has finished a call it started at or after t.
func (l *load) allStartedSince(t time.Duration) bool {
	for i := range l.last {
		if l.last[i].Load() < int64(t) {
			return false
		}
	}
	return true
}

// finish stops the callers, waits for them and returns every call, in order of start.
func (l *load) finish() []callRec {
	close(l.stopc)
	l.wg.Wait()
	var all []callRec
	for _, rs := range l.recs {
		all = append(all, rs...)
	}
	slices.SortFunc(all, func(a, b callRec) int { return int(a.start - b.start) })
	return all
}

// span is a half-open interval of load time.
type span struct{ from, to time.Duration }

func (s span) has(t time.Duration) bool { return t >= s.from && t < s.to }

// p99 is the 99th percentile latency of the successful calls started in s.
func p99(recs []callRec, s span) time.Duration {
	var lat []time.Duration
	for _, r := range recs {
		if s.has(r.start) && !r.failed() {
			lat = append(lat, r.end-r.start)
		}
	}
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[int(math.Ceil(0.99*float64(len(lat))))-1]
}

// rate is the successful calls that ended in s, per second.
func rate(recs []callRec, s span) float64 {
	n := 0
	for _, r := range recs {
		if s.has(r.end) && !r.failed() {
			n++
		}
	}
	return float64(n) / (s.to - s.from).Seconds()
}

// shareOf is id's share of the successful calls started in s, and how many those were.
func shareOf(recs []callRec, id string, s span) (float64, int) {
	n, got := 0, 0
	for _, r := range recs {
		if s.has(r.start) && !r.failed() {
			n++
			if r.inst == id {
				got++
			}
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(got) / float64(n), n
}

func countFailed(recs []callRec) int {
	n := 0
	for _, r := range recs {
		if r.failed() {
			n++
		}
	}
	return n
}

// warmUp makes calls until every one of insts has answered one (all connected, the
// connection's streams set up), waiting for the instances to be ready.
func warmUp(t testing.TB, cl greeterpb.GreeterClient, insts ...*instance) {
	t.Helper()
	testutil.Eventually(t, "every instance to answer a call", func() bool {
		calls(t, cl, context.Background(), 200, 8)
		for _, in := range insts {
			if in.served.Load() == 0 {
				return false
			}
		}
		return true
	})
}

// reportScenario sets a scenario benchmark's metrics; its ns/op means nothing.
func reportScenario(b *testing.B, metrics map[string]float64) {
	b.ReportMetric(0, "ns/op")
	for unit, v := range metrics {
		b.ReportMetric(v, unit)
	}
}

// ---- Cold instance ----

type coldParams struct {
	callers          int
	delay, coldDelay time.Duration // the fleet's handler delay; the new instance's while cold
	steady           time.Duration // steady span measured before the new instance comes
	cold, after      time.Duration // the new instance's cold period; the window's rest
	warmup           time.Duration // the new record's Warmup
}

var coldFull = coldParams{callers: 16, delay: time.Millisecond, coldDelay: 30 * time.Millisecond,
	steady: 2 * time.Second, cold: 3 * time.Second, after: 2 * time.Second, warmup: defaultWarmup}

type coldResult struct {
	steadyP99, windowP99, coldP99    time.Duration
	steadyRate, windowRate, coldRate float64 // calls/s
	coldShare                        float64 // the new instance's share of the calls started while it was cold
	coldCalls                        int     // the calls it answered that were started while it was cold
	rampShare                        float64 // its share of the calls started in the window after its cold period
	rampWeight                       float64 // its share by the weight formula in the middle of that span; 0: no span
	failed                           int
}

// coldInstance runs the cold-instance scenario with policy on a fresh fleet.
func coldInstance(t testing.TB, policy string, p coldParams) coldResult {
	c := newCluster(t)
	var fleet []*instance
	for i := range 3 {
		in := c.start(registry.Record{ID: fmt.Sprintf("old-%d", i)})
		in.delay.Store(int64(p.delay))
		fleet = append(fleet, in)
	}
	cl := greeterpb.NewGreeterClient(c.dialPolicy(policy))
	warmUp(t, cl, fleet...)

	l := startLoad(cl, p.callers)
	l.runFor(p.delay * 100) // the callers get going
	steady := span{l.now(), 0}
	l.runFor(p.steady)
	steady.to = l.now()

	reg := l.now()
	in := c.start(registry.Record{ID: "new", StartTime: l.origin.Add(reg), Warmup: p.warmup})
	in.delay.Store(int64(p.coldDelay))
	if n := in.served.Load(); n > 0 { // the client connects after the registration: never seen
		t.Logf("the new instance answered %d calls before it was made cold", n)
	}
	l.runFor(reg + p.cold - l.now())
	in.delay.Store(int64(p.delay))
	l.runFor(reg + p.cold + p.after - l.now())
	recs := l.finish()

	window, cold := span{reg, reg + p.cold + p.after}, span{reg, reg + p.cold}
	share, n := shareOf(recs, "new", cold)
	ramp, _ := shareOf(recs, "new", span{reg + p.cold, window.to})
	f := 1.0
	if p.warmup > 0 {
		f = min(max(float64(p.cold+p.after/2)/float64(p.warmup), 0.01), 1)
	}
	res := coldResult{steadyP99: p99(recs, steady), windowP99: p99(recs, window),
		steadyRate: rate(recs, steady), windowRate: rate(recs, window),
		coldP99: p99(recs, cold), coldRate: rate(recs, cold),
		coldShare: share, coldCalls: int(math.Round(share * float64(n))), failed: countFailed(recs),
		rampShare: ramp}
	if p.after > 0 {
		res.rampWeight = f / (3 + f)
	}
	return res
}

func (r coldResult) String() string {
	ramp := ""
	if r.rampWeight > 0 {
		ramp = fmt.Sprintf(", %.1f %% of those started after it (weight share %.1f %%)", 100*r.rampShare, 100*r.rampWeight)
	}
	return fmt.Sprintf("steady p99 %v, %.0f calls/s; window p99 %v (%.2f×), %.0f calls/s (%.2f×); cold period alone p99 %v (%.2f×), %.0f calls/s (%.2f×); the cold instance got %.2f %% of the calls started while cold (%d)%s; %d failed",
		r.steadyP99.Round(10*time.Microsecond), r.steadyRate, r.windowP99.Round(10*time.Microsecond),
		float64(r.windowP99)/float64(r.steadyP99), r.windowRate, r.windowRate/r.steadyRate,
		r.coldP99.Round(10*time.Microsecond), float64(r.coldP99)/float64(r.steadyP99), r.coldRate, r.coldRate/r.steadyRate,
		100*r.coldShare, r.coldCalls, ramp, r.failed)
}

// BenchmarkColdInstance: the release window of a cold instance against the steady fleet.
// Issue 18's goal: window p99 <= 1.5× steady, throughput >= 0.9× steady.
func BenchmarkColdInstance(b *testing.B) {
	for _, policy := range scenarioPolicies {
		b.Run(policy, func(b *testing.B) {
			var sum struct{ sp, wp, pr, tr, cp, cpr, ctr, share, calls, ramp, failed float64 }
			for range b.N {
				r := coldInstance(b, policy, coldFull)
				b.Logf("%s: %v", policy, r)
				sum.sp += ms(r.steadyP99)
				sum.wp += ms(r.windowP99)
				sum.pr += float64(r.windowP99) / float64(r.steadyP99)
				sum.tr += r.windowRate / r.steadyRate
				sum.cp += ms(r.coldP99)
				sum.cpr += float64(r.coldP99) / float64(r.steadyP99)
				sum.ctr += r.coldRate / r.steadyRate
				sum.share += 100 * r.coldShare
				sum.calls += float64(r.coldCalls)
				sum.ramp += 100 * r.rampShare
				sum.failed += float64(r.failed)
			}
			n := float64(b.N)
			reportScenario(b, map[string]float64{"steady_p99_ms": sum.sp / n, "window_p99_ms": sum.wp / n,
				"p99_ratio": sum.pr / n, "tput_ratio": sum.tr / n, "cold_p99_ms": sum.cp / n,
				"cold_p99_ratio": sum.cpr / n, "cold_tput_ratio": sum.ctr / n, "cold_share_%": sum.share / n,
				"cold_calls": sum.calls / n, "ramp_share_%": sum.ramp / n, "failed": sum.failed / n})
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ---- Slow instance ----

type slowParams struct {
	callers       int
	delay         time.Duration // every instance's handler delay before the slowdown
	factor        int           // the slow one's delay is factor × delay after
	before, after time.Duration // load before the slowdown; span measured after it
	bucket        time.Duration
}

var slowFull = slowParams{callers: 16, delay: 2 * time.Millisecond, factor: 10,
	before: time.Second, after: 3 * time.Second, bucket: 250 * time.Millisecond}

type slowResult struct {
	before  float64   // the instance's share before the slowdown
	buckets []float64 // its share of the calls started in each bucket after it
	counts  []int     // the calls started in each bucket
	bucket  time.Duration
	settled time.Duration
	tail    float64 // its share of the calls started from 1 s after the slowdown on
	target  float64 // 2× its capacity share
}

// slowInstance runs the slow-instance scenario with policy on a fresh fleet of 4.
func slowInstance(t testing.TB, policy string, p slowParams) slowResult {
	c := newCluster(t)
	var fleet []*instance
	for i := range 4 {
		in := c.start(registry.Record{ID: fmt.Sprintf("s-%d", i)})
		in.delay.Store(int64(p.delay))
		fleet = append(fleet, in)
	}
	cl := greeterpb.NewGreeterClient(c.dialPolicy(policy))
	warmUp(t, cl, fleet...)

	l := startLoad(cl, p.callers)
	l.runFor(p.before)
	at := l.now()
	fleet[0].delay.Store(int64(p.delay) * int64(p.factor))
	l.runFor(p.after)
	recs := l.finish()
	if n := countFailed(recs); n > 0 {
		t.Errorf("%s: %d calls failed", policy, n)
	}

	f := 1 / float64(p.factor)
	res := slowResult{target: 2 * f / (3 + f), bucket: p.bucket}
	res.before, _ = shareOf(recs, "s-0", span{at / 4, at})
	settledAt := -1
	for b := 0; time.Duration(b+1)*p.bucket <= p.after; b++ {
		s, n := shareOf(recs, "s-0", span{at + time.Duration(b)*p.bucket, at + time.Duration(b+1)*p.bucket})
		res.buckets = append(res.buckets, s)
		res.counts = append(res.counts, n)
		switch {
		case s > res.target:
			settledAt = -1
		case settledAt < 0:
			settledAt = b
		}
	}
	res.settled = -1
	if settledAt >= 0 {
		res.settled = time.Duration(settledAt+1) * p.bucket
	}
	res.tail, _ = shareOf(recs, "s-0", span{at + time.Second, at + p.after})
	return res
}

// from is the instance's share of the calls started from d after the slowdown to the end.
func (r slowResult) from(d time.Duration) float64 {
	got, n := 0.0, 0
	for b := int(d / r.bucket); b < len(r.buckets); b++ {
		got += r.buckets[b] * float64(r.counts[b])
		n += r.counts[b]
	}
	if n == 0 {
		return 0
	}
	return got / float64(n)
}

func (r slowResult) String() string {
	s := fmt.Sprintf("share before %.1f %%; after the slowdown, per %d buckets:", 100*r.before, len(r.buckets))
	for _, b := range r.buckets {
		s += fmt.Sprintf(" %.1f", 100*b)
	}
	settled := "never"
	if r.settled >= 0 {
		settled = r.settled.String()
	}
	return s + fmt.Sprintf(" %%; from 1 s on %.1f %%; within 2× its capacity share (%.1f %%) from %s on", 100*r.tail, 100*r.target, settled)
}

// BenchmarkSlowInstance: one of 4 instances made 10× slower. Issue 18's goal: its share is
// within 2× its capacity share (3.2 %, so 6.4 %) within a second.
func BenchmarkSlowInstance(b *testing.B) {
	for _, policy := range scenarioPolicies {
		b.Run(policy, func(b *testing.B) {
			var tail, first, settled float64
			for range b.N {
				r := slowInstance(b, policy, slowFull)
				b.Logf("%s: %v", policy, r)
				tail += 100 * r.tail
				first += 100 * (r.buckets[0] + r.buckets[1] + r.buckets[2] + r.buckets[3]) / 4
				if r.settled < 0 {
					settled += ms(slowFull.after) + 1000 // never: report beyond the span
				} else {
					settled += ms(r.settled)
				}
			}
			n := float64(b.N)
			reportScenario(b, map[string]float64{"share_1s_on_%": tail / n, "share_first_1s_%": first / n,
				"settled_ms": settled / n})
		})
	}
}

// ---- Kill during warmup ----

type killParams struct {
	callers   int
	delay     time.Duration
	old, new  int
	newUptime time.Duration // how far into their ramp the replacements are
	warmup    time.Duration
	lead      time.Duration // load before sampling
	sample    time.Duration // the in-flight gauges are sampled over this span before the kill
}

var killFull = killParams{callers: 16, delay: 5 * time.Millisecond, old: 2, new: 2,
	newUptime: 3 * time.Second, warmup: defaultWarmup, lead: 300 * time.Millisecond, sample: 200 * time.Millisecond}

type killResult struct {
	failed     int
	calls      int
	victimFrac float64 // the victim's share of the calls in flight on the fleet before the kill
}

// killer runs kill rounds on one cluster: each round a fresh fleet and a fresh connection.
type killer struct {
	c     *cluster
	round int
}

// killRound runs one round of the kill-during-warmup scenario with policy.
func (k *killer) killRound(t testing.TB, policy string, p killParams) killResult {
	c := k.c
	k.round++
	now := time.Now()
	var fleet []*instance
	for i := range p.old + p.new {
		rec := registry.Record{ID: fmt.Sprintf("r%d-old-%d", k.round, i)}
		if i >= p.old {
			rec = registry.Record{ID: fmt.Sprintf("r%d-new-%d", k.round, i), StartTime: now.Add(-p.newUptime), Warmup: p.warmup}
		}
		in := c.start(rec)
		in.delay.Store(int64(p.delay))
		fleet = append(fleet, in)
	}
	defer func() { // the round's fleet leaves; the next round's connection sees only its own
		for _, in := range fleet {
			in.srv.Stop()
			_ = in.reg.Close(context.Background())
		}
	}()
	conn := c.dialPolicy(policy)
	defer func() { _ = conn.Close() }()
	cl := greeterpb.NewGreeterClient(conn)
	warmUp(t, cl, fleet...)

	victim := fleet[0]
	l := startLoad(cl, p.callers)
	l.runFor(p.lead)
	var onVictim, onAll int64
	for end := l.now() + p.sample; l.now() < end; {
		for i, in := range fleet {
			n := int64(in.inflight.Load())
			onAll += n
			if i == 0 {
				onVictim += n
			}
		}
		l.runFor(time.Millisecond)
	}
	kill := l.now()
	victim.srv.Stop() // dies abruptly: its connections close, the calls in flight on it are cut
	testutil.Eventually(t, "every caller to finish a call started after the kill", func() bool { return l.allStartedSince(kill) })
	recs := l.finish()
	res := killResult{failed: countFailed(recs), calls: len(recs)}
	if onAll > 0 {
		res.victimFrac = float64(onVictim) / float64(onAll)
	}
	for _, r := range recs {
		if r.failed() && r.start < kill-time.Second { // long before the kill: not its doing
			t.Errorf("%s: a call started %v before the kill failed", policy, kill-r.start)
		}
	}
	return res
}

// BenchmarkKillDuringWarmup: an old instance killed while its replacements ramp, no retry.
// Issue 18's goal: switchyard loses no more calls than round_robin. Both policies take turns,
// -scenario.rounds kills each.
func BenchmarkKillDuringWarmup(b *testing.B) {
	type sums struct{ failed, frac, calls float64 }
	var got [2]sums
	for range b.N {
		k := &killer{c: newCluster(b)}
		for r := range *killRounds {
			for j := range scenarioPolicies {
				pi := (j + r) % 2 // alternate which policy goes first
				res := k.killRound(b, scenarioPolicies[pi], killFull)
				got[pi].failed += float64(res.failed)
				got[pi].frac += res.victimFrac
				got[pi].calls += float64(res.calls)
			}
		}
	}
	n := float64(b.N * *killRounds)
	m := map[string]float64{"rounds": float64(*killRounds)}
	for pi, policy := range scenarioPolicies {
		m[policy+"_failed/kill"] = got[pi].failed / n
		m[policy+"_victim_inflight_%"] = 100 * got[pi].frac / n
		b.Logf("%s: %.2f calls failed per kill, victim held %.1f %% of the calls in flight (%d kills, %.0f calls per round)",
			policy, got[pi].failed/n, 100*got[pi].frac/n, b.N**killRounds, got[pi].calls/n)
	}
	reportScenario(b, m)
}

// ---- The default run: scaled down, with margins that hold under 4 CPU burners and -race ----

// The bounds of the default run's scenario tests, set from runs of the tests with -race and
// 4 busy-loop CPU burners on 2 cores (go test -race -count=3, several times), with room on
// both sides of each: what switchyard_weighted gave there, and what fails.
const (
	// The cold instance got 0.25 to 0.52 % of the calls started while it was cold (with
	// latency-aware picking; 2.7 to 4.5 % with the first, outstanding-only design, 0.3 % with
	// weights only; round_robin gives it 25 %).
	maxColdShare = 0.03
	// The 10× slower instance got 1.8 to 2.7 % of the calls (10 to 13 % with the first
	// design; 25 % with weights only, and with round_robin).
	maxSlowShare = 0.08
	// The victim held -1.3 to +2.1 points of the calls in flight more than with round_robin
	// (25 %); 8 to 11 with the first design, 17 to 20 with weights only.
	maxVictimExcess = 0.08
)

// TestColdInstanceScenario: a cold new instance (30 ms for its first second, default warmup)
// joining 3 instances of 1 ms under 16 callers gets few of the calls started while it is cold.
func TestColdInstanceScenario(t *testing.T) {
	p := coldFull
	p.steady, p.cold, p.after = 300*time.Millisecond, time.Second, 0
	r := coldInstance(t, policySwitchyard, p)
	t.Logf("switchyard: %v", r)
	if r.failed > 0 {
		t.Errorf("%d calls failed", r.failed)
	}
	if r.coldShare > maxColdShare {
		t.Errorf("the cold instance got %.2f %% of the calls started while it was cold, want <= %.0f %% (round_robin gives it 25 %%)", 100*r.coldShare, 100*maxColdShare)
	}
}

// TestSlowInstanceScenario: one of 4 instances made 10× slower (10 ms to 100 ms: long enough
// that the CPU's queueing, under the race detector and burners, does not hide the
// difference) under 16 callers gets well under its weight share (25 %) of the calls started
// from 250 ms to 1.5 s after the slowdown.
func TestSlowInstanceScenario(t *testing.T) {
	p := slowFull
	p.delay, p.before, p.after = 10*time.Millisecond, 300*time.Millisecond, 1500*time.Millisecond
	r := slowInstance(t, policySwitchyard, p)
	t.Logf("switchyard: %v", r)
	share := r.from(p.bucket)
	if share > maxSlowShare {
		t.Errorf("the 10× slower instance got %.1f %% of the calls started from %v to %v after it slowed down, want <= %.0f %% (its weight share is 25 %%)",
			100*share, p.bucket, p.after, 100*maxSlowShare)
	}
}

// TestLoadAwareOffKeepsTheWeights: with {"loadAware": false} the slow instance keeps its
// weighted share (25 %), as before load-aware picking: the switch turns it off.
func TestLoadAwareOffKeepsTheWeights(t *testing.T) {
	p := slowFull
	p.delay, p.before, p.after = 10*time.Millisecond, 300*time.Millisecond, 1500*time.Millisecond
	r := slowInstance(t, policyWeightsOnly, p)
	t.Logf("weights only: %v", r)
	if share := r.from(p.bucket); share < 0.2 || share > 0.3 {
		t.Errorf("with loadAware false the 10× slower instance got %.1f %% of the calls, want its weight share, 25 %% (±5)", 100*share)
	}
}

// TestKillDuringWarmupScenario: when an old instance is killed while its replacements ramp,
// it holds a share of the calls in flight (sampled over 600 ms before the kill) not far
// above round_robin's (25 %). One kill per policy: the failures it counts are too few to
// compare (BenchmarkKillDuringWarmup does), the in-flight share is not.
func TestKillDuringWarmupScenario(t *testing.T) {
	k := &killer{c: newCluster(t)}
	p := killFull
	p.sample = 600 * time.Millisecond
	frac := map[string]float64{}
	for _, policy := range scenarioPolicies {
		r := k.killRound(t, policy, p)
		frac[policy] = r.victimFrac
		t.Logf("%s: victim held %.1f %% of the calls in flight; %d of %d calls failed", policy, 100*r.victimFrac, r.failed, r.calls)
	}
	if ex := frac[policySwitchyard] - frac[policyRoundRobin]; ex > maxVictimExcess {
		t.Errorf("switchyard: the victim held %.1f %% of the calls in flight, round_robin's %.1f %%: want at most %.0f points more",
			100*frac[policySwitchyard], 100*frac[policyRoundRobin], 100*maxVictimExcess)
	}
}
