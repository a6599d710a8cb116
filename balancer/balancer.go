package balancer

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/switchyard-go/switchyard/internal/reach"
	"github.com/switchyard-go/switchyard/internal/sticky"
)

// Name is the policy's name in a service config: {"loadBalancingConfig":[{"switchyard_weighted":{}}]}.
const Name = "switchyard_weighted"

// OfflineHeader is the response metadata key, sent in header and trailer with value "1", by
// which an instance that is going offline tells its callers to stop picking it (DESIGN.md
// "Offline notification").
const OfflineHeader = "x-switchyard-offline"

const meterName = "github.com/switchyard-go/switchyard/balancer"

func init() {
	balancer.Register(builder{})
}

type builder struct{}

func (builder) Name() string { return Name }

// DefaultStickyWait is how long a sticky request waits for an endpoint of its color that is
// connecting, when the color has no ready one: long enough for a TCP and TLS handshake across
// regions, far shorter than gRPC's 20 s connect timeout that bounds it otherwise.
const DefaultStickyWait = 3 * time.Second

// ParseConfig reads the policy's options: {} for the defaults, or {"stickyWait": "5s"} (a
// duration in gRPC's JSON form, seconds with an "s" suffix; 0s means do not wait).
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("switchyard balancer: config %s is not a JSON object: %w", js, err)
	}
	cfg := lbConfig{stickyWait: DefaultStickyWait}
	for k, v := range m {
		if k != "stickyWait" {
			return nil, fmt.Errorf("switchyard balancer: config %s: unknown option %q; %s knows only \"stickyWait\"", js, k, Name)
		}
		var d string
		if err := json.Unmarshal(v, &d); err != nil || !strings.HasSuffix(d, "s") {
			return nil, fmt.Errorf("switchyard balancer: config %s: stickyWait must be a duration string in seconds, e.g. \"3s\" or \"0.5s\"", js)
		}
		w, err := time.ParseDuration(d)
		if err != nil || w < 0 {
			return nil, fmt.Errorf("switchyard balancer: config %s: stickyWait %s must be a non-negative duration in seconds, e.g. \"3s\"", js, v)
		}
		cfg.stickyWait = w
	}
	return cfg, nil
}

type lbConfig struct {
	serviceconfig.LoadBalancingConfig
	stickyWait time.Duration
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return newBalancer(cc, opts, clockwork.NewRealClock(), slog.Default())
}

// newBalancer builds the policy with its clock (the warmup ramp and its refresh timer) and
// logger; Build passes the real clock and slog.Default(), tests a fake clock and their own.
func newBalancer(cc balancer.ClientConn, opts balancer.BuildOptions, clock clockwork.Clock, log *slog.Logger) *wBalancer {
	log = log.With("component", "switchyard-balancer", "target", opts.Target.String())
	meter := otel.GetMeterProvider().Meter(meterName)
	fallbacks, err := meter.Int64Counter("switchyard.balancer.sticky_fallbacks",
		metric.WithDescription("Sticky requests sent to the other color, and re-decided for it, because the decided color had no usable endpoint and the caller is not of that color."),
		metric.WithUnit("{request}"))
	if err != nil {
		log.Warn("switchyard balancer: cannot create metric; sticky fallbacks are only logged", "err", err)
		fallbacks = noop.Int64Counter{}
	}
	refusals, err := meter.Int64Counter("switchyard.balancer.sticky_refusals",
		metric.WithDescription("Sticky requests failed (UNAVAILABLE) rather than sent to the other color, because the decided color had no usable endpoint and the caller is code of that color."),
		metric.WithUnit("{request}"))
	if err != nil {
		log.Warn("switchyard balancer: cannot create metric; sticky refusals are only logged", "err", err)
		refusals = noop.Int64Counter{}
	}
	b := &wBalancer{
		ClientConn: cc,
		log:        log,
		app:        opts.Target.Endpoint(),
		fallbacks:  fallbacks,
		refusals:   refusals,
		fbAttrs:    metric.WithAttributeSet(attribute.NewSet(attribute.String("target", opts.Target.String()))),
		offline:    map[string]EndpointInfo{},
		since:      map[string]time.Time{},
		stickyWait: DefaultStickyWait,
		reach:      new(reach.Entry),
		clock:      clock,
		next:       new(atomic.Uint64),
	}
	b.child = endpointsharding.NewBalancer(b, opts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

// wBalancer is a parent of endpointsharding with one pick_first child per endpoint, as
// grpc-go's round_robin is; it replaces the children's round-robin picker with a weighted one.
//
// gRPC calls the balancer.Balancer methods one at a time. UpdateState (from the children),
// the timer (warmup, sticky wait) and Done callbacks (offline marks) can come from other
// goroutines: mu guards everything below it, and is held while a picker is built and sent, so
// pickers go out in the order their inputs changed. The reach board's lock is taken under mu
// (never the other way round). No user code runs under mu.
type wBalancer struct {
	balancer.ClientConn // embedded: gRPC requires it, and UpdateState is intercepted
	child               balancer.Balancer
	log                 *slog.Logger
	app                 string // the target's endpoint: the called app, for the reach board
	fallbacks           metric.Int64Counter
	refusals            metric.Int64Counter
	fbAttrs             metric.AddOption
	clock               clockwork.Clock // Now for the warmup factor and sticky wait, AfterFunc for the refresh
	next                *atomic.Uint64
	reach               *reach.Entry // this connection's view on the process's reach board

	mu         sync.Mutex
	last       balancer.State                // the children's last aggregated state
	children   []endpointsharding.ChildState // from last
	offline    map[string]EndpointInfo       // id → the record it was marked offline under
	since      map[string]time.Time          // endpoint key → when it began connecting (IDLE or CONNECTING)
	stickyWait time.Duration                 // from the config; DefaultStickyWait
	timer      clockwork.Timer               // refresh while an endpoint warms or a sticky wait runs out
	closed     bool
}

func (b *wBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	// Offline marks end when the instance leaves or a different record for it arrives.
	present := make(map[string]EndpointInfo, len(s.ResolverState.Endpoints))
	for _, ep := range s.ResolverState.Endpoints {
		if info, ok := EndpointInfoFrom(ep); ok {
			present[info.ID] = info
		}
	}
	b.mu.Lock()
	for id, marked := range b.offline {
		if cur, ok := present[id]; !ok || !cur.Equal(marked) {
			delete(b.offline, id)
		}
	}
	if cfg, ok := s.BalancerConfig.(lbConfig); ok {
		b.stickyWait = cfg.stickyWait
	}
	b.mu.Unlock()
	return b.child.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(s.ResolverState),
	})
}

func (b *wBalancer) ResolverError(err error) { b.child.ResolverError(err) }

func (b *wBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {} // deprecated

func (b *wBalancer) ExitIdle() { b.child.ExitIdle() }

func (b *wBalancer) Close() {
	b.mu.Lock()
	b.closed = true
	if b.timer != nil {
		b.timer.Stop()
	}
	b.reach.Close()
	b.mu.Unlock()
	b.child.Close()
}

// UpdateState receives endpointsharding's aggregated state and sends the weighted picker.
func (b *wBalancer) UpdateState(s balancer.State) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = s
	b.children = endpointsharding.ChildStatesFromPicker(s.Picker)
	b.sendLocked()
}

// markOffline takes an endpoint out of the picker at once; called from Done callbacks.
func (b *wBalancer) markOffline(info EndpointInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.offline[info.ID]; ok && cur.Equal(info) {
		return
	}
	b.offline[info.ID] = info
	b.log.Info("switchyard balancer: instance says it is going offline; no longer picking it", "instance", info.ID)
	b.sendLocked()
}

func (b *wBalancer) refresh() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sendLocked()
}

// sendLocked builds a picker from the ready children and sends it, publishes what this
// connection reaches on the reach board, and keeps the timer running while any endpoint warms
// or a sticky wait is running. With no ready child it passes the children's own state and
// picker through (connecting, failing). Needs mu.
func (b *wBalancer) sendLocked() {
	if b.closed {
		return
	}
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	now := b.clock.Now()
	blue, green := false, false
	allChannels := map[string]int{}
	for _, c := range b.children {
		info, _ := EndpointInfoFrom(c.Endpoint)
		blue = blue || info.Color == sticky.Blue
		green = green || info.Color == sticky.Green
		if info.Channel != "" {
			allChannels[info.Channel]++
		}
	}
	// A sticky request waits for a connecting endpoint of its color for stickyWait from when
	// it began connecting; after that the endpoint counts as unusable until it is READY.
	var waiting [2]bool // a usable endpoint of the color is connecting within its wait
	var refreshAt time.Time
	since := make(map[string]time.Time, len(b.since))
	for _, c := range b.children {
		st := c.State.ConnectivityState
		if st != connectivity.Connecting && st != connectivity.Idle {
			continue
		}
		key := endpointKey(c.Endpoint)
		t, ok := b.since[key]
		if !ok {
			t = now
		}
		since[key] = t
		info, _ := EndpointInfoFrom(c.Endpoint)
		if (info.Color != sticky.Blue && info.Color != sticky.Green) || info.Degraded || b.isOfflineLocked(c.Endpoint) {
			continue
		}
		if end := t.Add(b.stickyWait); now.Before(end) {
			waiting[colorIndex(info.Color)] = true
			if refreshAt.IsZero() || end.Before(refreshAt) {
				refreshAt = end
			}
		}
	}
	b.since = since
	defer func() {
		if !refreshAt.IsZero() {
			b.timer = b.clock.AfterFunc(max(refreshAt.Sub(now), time.Millisecond), b.refresh)
		}
	}()

	var live, marked []endpointsharding.ChildState // ready, and not / already marked offline
	for _, c := range b.children {
		if c.State.ConnectivityState != connectivity.Ready {
			continue
		}
		if b.isOfflineLocked(c.Endpoint) {
			marked = append(marked, c)
		} else {
			live = append(live, c)
		}
	}
	if len(live)+len(marked) == 0 || b.last.ConnectivityState != connectivity.Ready {
		b.reach.Set(reach.View{App: b.app, Channel: mostCommon(allChannels), Serving: waiting})
		b.ClientConn.UpdateState(b.last)
		return
	}
	p := &picker{next: b.next, fallbacks: b.fallbacks, refusals: b.refusals, fbAttrs: b.fbAttrs, log: b.log, reach: b.reach}
	channels := map[string]int{}
	warmup := time.Duration(0)
	// Undecided requests go to the live endpoints, or to the marked ones if that is all
	// there is (they still serve). A sticky request's color set is its color's live
	// endpoints, or, if it has none, its marked ones: they serve what reaches them, and
	// crossing to the other color is worse (issue 12, case 3). Degraded endpoints (they
	// cannot keep their color's requests on their color downstream) are in no color set.
	var markedByColor [2]weightedSet
	for _, c := range slices.Concat(live, marked) {
		info, _ := EndpointInfoFrom(c.Endpoint)
		off := b.isOfflineLocked(c.Endpoint)
		done := b.doneFor(info)
		if !off || len(live) == 0 {
			p.all.add(c.State.Picker, done, info.EffectiveWeight(blue && green, now))
		}
		if (info.Color == sticky.Blue || info.Color == sticky.Green) && !info.Degraded {
			set := &p.byColor[colorIndex(info.Color)]
			if off {
				set = &markedByColor[colorIndex(info.Color)]
			}
			set.add(c.State.Picker, done, info.Weight*info.WarmupFactor(now))
		}
		if info.Channel != "" {
			channels[info.Channel]++
		}
		if info.warming(now) && (warmup == 0 || info.Warmup < warmup) {
			warmup = info.Warmup
		}
	}
	for ci := range p.byColor {
		if p.byColor[ci].len() == 0 {
			p.byColor[ci] = markedByColor[ci]
		}
		p.pending[ci] = p.byColor[ci].len() == 0 && waiting[ci]
	}
	p.channel = mostCommon(channels)
	for _, c := range b.children {
		st := c.State.ConnectivityState
		if st != connectivity.Connecting && st != connectivity.Idle || b.isOfflineLocked(c.Endpoint) {
			continue
		}
		info, _ := EndpointInfoFrom(c.Endpoint)
		// Every ready endpoint is drained but this weighted one connects: wait for it.
		p.waitWeighted = p.waitWeighted || p.all.total == 0 && info.EffectiveWeight(blue && green, now) > 0
	}
	p.prepare(b.app)
	b.reach.Set(reach.View{App: b.app, Channel: p.channel, Serving: [2]bool{
		p.byColor[0].len() > 0 || p.pending[0], p.byColor[1].len() > 0 || p.pending[1]}})
	b.ClientConn.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: p})
	if warmup > 0 {
		// At least 20 steps over the shortest ramp, between 10 ms and 1 s apart.
		at := now.Add(min(max(warmup/20, 10*time.Millisecond), time.Second))
		if refreshAt.IsZero() || at.Before(refreshAt) {
			refreshAt = at
		}
	}
}

// endpointKey identifies an endpoint across resolver updates: its first address.
func endpointKey(ep resolver.Endpoint) string {
	if len(ep.Addresses) == 0 {
		return ""
	}
	return ep.Addresses[0].Addr
}

// isOfflineLocked reports whether ep's instance is marked offline. Needs mu.
func (b *wBalancer) isOfflineLocked(ep resolver.Endpoint) bool {
	info, ok := EndpointInfoFrom(ep)
	if !ok {
		return false
	}
	_, off := b.offline[info.ID]
	return off
}

// doneFor returns the pick's Done callback for an endpoint: it watches the trailer for the
// offline flag. Built once per endpoint per picker, so Pick allocates nothing.
func (b *wBalancer) doneFor(info EndpointInfo) func(balancer.DoneInfo) {
	if info.ID == "" {
		return func(balancer.DoneInfo) {}
	}
	return func(di balancer.DoneInfo) {
		if isOffline(di.Trailer) {
			b.markOffline(info)
		}
	}
}

func isOffline(md metadata.MD) bool {
	for _, v := range md[OfflineHeader] {
		if v == "1" {
			return true
		}
	}
	return false
}

// mostCommon returns the channel most endpoints name (the smallest name on a tie), "" if none.
func mostCommon(counts map[string]int) string {
	best, n := "", 0
	for _, ch := range slices.Sorted(maps.Keys(counts)) {
		if counts[ch] > n {
			best, n = ch, counts[ch]
		}
	}
	return best
}
