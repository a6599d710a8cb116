package balancer

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/reach"
	"github.com/switchyard-go/switchyard/internal/sticky"
)

// Name is the policy's name in a service config: {"loadBalancingConfig":[{"switchyard_weighted":{}}]}.
const Name = "switchyard_weighted"

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

// ParseConfig reads the policy's options: {} for the defaults, {"stickyWait": "5s"} (a
// duration in gRPC's JSON form, seconds with an "s" suffix; 0s means do not wait), and
// {"loadAware": false} to pick by the weights alone (default true; see "Load" in the
// package doc).
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("switchyard balancer: config %s is not a JSON object: %w", js, err)
	}
	cfg := lbConfig{stickyWait: DefaultStickyWait, loadAware: true}
	for k, v := range m {
		if k == "loadAware" {
			if err := json.Unmarshal(v, &cfg.loadAware); err != nil {
				return nil, fmt.Errorf("switchyard balancer: config %s: loadAware must be true or false, not %s", js, v)
			}
			continue
		}
		if k != "stickyWait" {
			return nil, fmt.Errorf("switchyard balancer: config %s: unknown option %q; %s knows only \"stickyWait\" and \"loadAware\"", js, k, Name)
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
	loadAware  bool
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return newBalancer(cc, opts, clockwork.NewRealClock(), slog.Default())
}

// newBalancer builds the policy with its clock (the warmup ramp and its refresh timer) and
// logger; Build passes the real clock and slog.Default(), tests a fake clock and their own.
// A logger in the resolver state's attributes (WithLogger) replaces log.
func newBalancer(cc balancer.ClientConn, opts balancer.BuildOptions, clock clockwork.Clock, baseLog *slog.Logger) *wBalancer {
	log := baseLog.With("component", "switchyard-balancer", "target", opts.Target.String())
	return &wBalancer{
		cc:         cc,
		opts:       opts,
		buildChild: balancer.Get(pickfirst.Name).Build,
		baseLog:    baseLog,
		log:        log,
		app:        opts.Target.Endpoint(),
		fbAttrs:    metric.WithAttributeSet(attribute.NewSet(attribute.String("switchyard.app", opts.Target.Endpoint()))),
		offAttrs:   metric.WithAttributeSet(attribute.NewSet(attribute.String("switchyard.app", opts.Target.Endpoint()))),
		byKey:      map[string]*endpoint{},
		offline:    map[string]EndpointInfo{},
		stickyWait: DefaultStickyWait,
		reach:      new(reach.Entry),
		clock:      clock,
		loadClock:  newLoadClock(clock),
		next:       new(atomic.Uint64),
	}
}

// wBalancer keeps one pick_first child per endpoint, as grpc-go's round_robin does through
// endpointsharding; it does that sharding itself so that what it knows of an endpoint (its
// EndpointInfo, its Done callback, since when it connects) is kept across updates instead
// of being looked up again for every picker, and a resolver update only reaches the
// children whose endpoint changed or that are not READY.
//
// gRPC calls the balancer.Balancer methods one at a time. The children's state updates, the
// timer (warmup, sticky wait) and Done callbacks (offline marks) can come from other
// goroutines: mu guards everything below it, and is held while a picker is built and sent, so
// pickers go out in the order their inputs changed. Lock order: an endpoint's childMu, then
// mu (a child reports its state while it is being called); never a child's method under mu.
// The reach board's lock is taken under mu (never the other way round). No user code runs
// under mu.
type wBalancer struct {
	cc         balancer.ClientConn // gRPC's
	opts       balancer.BuildOptions
	buildChild func(balancer.ClientConn, balancer.BuildOptions) balancer.Balancer // pick_first
	app        string                                                             // the target's endpoint: the called app, for the reach board
	fbAttrs    metric.AddOption                                                   // sticky_fallbacks, sticky_refusals: switchyard.app
	offAttrs   metric.AddOption                                                   // offline_marks: switchyard.app
	// cells are the pick counters, one per (color, channel) seen (metrics.go); written under
	// mu, copy on write, read by the metrics callback without a lock.
	cells atomic.Pointer[[]*pickCell]
	clock clockwork.Clock // Now for the warmup factor and sticky wait, AfterFunc for the refresh
	// loadClock reads clock for the endpoints' failure times (load.go).
	loadClock *loadClock
	next      *atomic.Uint64
	reach     *reach.Entry // this connection's view on the process's reach board
	sampling  atomic.Bool  // the sampler (sampler.go) runs, or the balancer is closed

	mu         sync.Mutex
	baseLog    *slog.Logger            // Build's, or the resolver state's (WithLogger)
	m          *meters                 // on the resolver state's provider (WithMeterProvider) or the global one; nil before the first update
	log        *slog.Logger            // baseLog with the component and target
	list       []*endpoint             // the resolver state's endpoints, in its order, without duplicates
	spare      []*endpoint             // the previous list's array, reused by the next update
	byKey      map[string]*endpoint    // list by endpointKey
	gen        uint64                  // counts updates: an endpoint's gen says it is in list
	inhibit    bool                    // an update is calling the children: send one picker at its end
	resolveErr error                   // the last resolver error, for the picker when there is no endpoint
	offline    map[string]EndpointInfo // id → the record it was marked offline under
	stickyWait time.Duration           // from the config; DefaultStickyWait
	// weightsOnly: {"loadAware": false}; picks by the weights alone, no sampler. Atomic: Done
	// callbacks read it.
	weightsOnly atomic.Bool
	timer       clockwork.Timer // refresh while an endpoint warms or a sticky wait runs out
	closed      bool
	allChans    channelCounts   // scratch for sendLocked
	readyChans  channelCounts   // scratch for sendLocked
	decisions   *sticky.Cache   // the pickers' decision cache, for the channel it names
	smp         sampler         // the endpoints' latency sampler (sampler.go)
	smpTimer    clockwork.Timer // its next tick; nil while it is stopped
}

// endpoint is one endpoint of the resolver state and its pick_first child. It is the
// ClientConn its child sees: UpdateState is intercepted, the rest goes to gRPC's.
type endpoint struct {
	balancer.ClientConn // gRPC's
	b                   *wBalancer
	key                 string
	done                func(balancer.DoneInfo) // the picks' Done callback, built once
	load                endpointLoad            // requests outstanding, last sick failure: Pick and done (atomics)
	win                 window                  // the sampler's window of load (sampler.go); guarded by b.mu

	// Guarded by b.mu:
	ep      resolver.Endpoint
	info    EndpointInfo // from ep, read when its Attributes change
	cell    *pickCell    // counts its picks: the cell of info's color and channel
	hasInfo bool
	state   balancer.State // the child's last
	since   time.Time      // when it began connecting (IDLE or CONNECTING); zero otherwise
	gen     uint64         // b.gen of the last update that named it
	removed bool           // left the resolver state: its child's reports are ignored
	off     bool           // scratch for sendLocked: marked offline

	childMu sync.Mutex // serialises calls into child; taken before b.mu, never under it
	child   balancer.Balancer
	closed  bool // guarded by childMu
}

// UpdateState records the child's state and, unless an update is under way, sends a picker.
func (e *endpoint) UpdateState(s balancer.State) {
	b := e.b
	b.mu.Lock()
	if e.removed {
		b.mu.Unlock()
		return
	}
	e.state = s
	if st := s.ConnectivityState; st == connectivity.Connecting || st == connectivity.Idle {
		if e.since.IsZero() {
			e.since = b.clock.Now()
		}
	} else {
		e.since = time.Time{}
	}
	b.sendLocked()
	b.mu.Unlock()
	if s.ConnectivityState == connectivity.Idle {
		go e.exitIdle() // reconnect, as endpointsharding does by default
	}
}

func (e *endpoint) exitIdle() {
	e.childMu.Lock()
	defer e.childMu.Unlock()
	if !e.closed {
		e.child.ExitIdle()
	}
}

func (e *endpoint) close() {
	e.childMu.Lock()
	defer e.childMu.Unlock()
	if !e.closed {
		e.closed = true
		e.child.Close()
	}
}

func (b *wBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	eps := s.ResolverState.Endpoints
	var fresh, forward, gone []*endpoint
	b.mu.Lock()
	if cfg, ok := s.BalancerConfig.(lbConfig); ok {
		b.stickyWait = cfg.stickyWait
		b.weightsOnly.Store(!cfg.loadAware)
	}
	b.useLoggerLocked(loggerFrom(s.ResolverState.Attributes))
	b.useMeterProviderLocked(meterProviderFrom(s.ResolverState.Attributes))
	b.inhibit = true
	b.resolveErr = nil
	b.gen++
	list := slices.Grow(b.spare[:0], len(eps))
	for _, ep := range eps {
		key := endpointKey(ep)
		e, ok := b.byKey[key]
		switch {
		case ok && e.gen == b.gen:
			continue // a duplicate
		case !ok:
			e = &endpoint{ClientConn: b.cc, b: b, key: key}
			e.done = func(di balancer.DoneInfo) {
				e.load.done(di.Err, b.loadClock)
				if !b.weightsOnly.Load() {
					b.wakeSampler()
				}
				if isOffline(di.Trailer) {
					b.markOffline(e)
				}
			}
			e.info, e.hasInfo = EndpointInfoFrom(ep)
			e.cell = b.cellLocked(e.info.Color, e.info.Channel)
			b.byKey[key] = e
			fresh = append(fresh, e)
		case ep.Attributes != e.ep.Attributes:
			e.info, e.hasInfo = EndpointInfoFrom(ep)
			if e.cell.color != e.info.Color || e.cell.channel != e.info.Channel {
				e.cell = b.cellLocked(e.info.Color, e.info.Channel)
			}
		}
		// A READY child whose addresses are the same has nothing to do with the update
		// (pick_first keeps its connection); any other child gets it, as endpointsharding does.
		if ok && (e.state.ConnectivityState != connectivity.Ready || !sameAddresses(e.ep.Addresses, ep.Addresses)) {
			forward = append(forward, e)
		}
		e.ep, e.gen = ep, b.gen
		list = append(list, e)
	}
	for _, e := range b.list {
		if e.gen != b.gen {
			e.removed = true
			delete(b.byKey, e.key)
			gone = append(gone, e)
		}
	}
	old := b.list
	clear(old) // no pointer to a removed endpoint stays in the spare array
	b.spare, b.list = old[:0], list
	if len(b.offline) > 0 {
		// Offline marks end when the instance leaves or a different record for it arrives
		// (a new registration included); a change of the rule alone is not a new record.
		present := make(map[string]EndpointInfo, len(list))
		for _, e := range list {
			if e.hasInfo {
				present[e.info.ID] = e.info
			}
		}
		for id, marked := range b.offline {
			if cur, ok := present[id]; !ok || !cur.sameRecord(marked) {
				delete(b.offline, id)
			}
		}
	}
	b.mu.Unlock()

	for _, e := range gone {
		e.close()
	}
	// The children get one endpoint each, with pick_first's health listener enabled (as
	// round_robin does); new ones are built first.
	child := pickfirst.EnableHealthListener(resolver.State{Attributes: s.ResolverState.Attributes})
	var err error
	for _, group := range [2][]*endpoint{fresh, forward} {
		for _, e := range group {
			e.childMu.Lock()
			if e.child == nil {
				e.child = b.buildChild(e, b.opts)
			}
			child.Endpoints = []resolver.Endpoint{e.ep}
			if cerr := e.child.UpdateClientConnState(balancer.ClientConnState{ResolverState: child}); cerr != nil && err == nil {
				err = cerr
			}
			e.childMu.Unlock()
		}
	}
	if len(list) == 0 {
		err = balancer.ErrBadResolverState
	}
	b.mu.Lock()
	b.inhibit = false
	b.sendLocked()
	b.mu.Unlock()
	return err
}

// sameAddresses reports whether an endpoint's addresses are unchanged.
func sameAddresses(a, b []resolver.Address) bool {
	return slices.EqualFunc(a, b, resolver.Address.Equal)
}

// ResolverError passes the error to the children (pick_first fails with it when it has no
// address yet); with no endpoint at all, the picker fails with it.
func (b *wBalancer) ResolverError(err error) {
	b.mu.Lock()
	b.inhibit = true
	b.resolveErr = err
	list := slices.Clone(b.list)
	b.mu.Unlock()
	for _, e := range list {
		e.childMu.Lock()
		if !e.closed && e.child != nil {
			e.child.ResolverError(err)
		}
		e.childMu.Unlock()
	}
	b.mu.Lock()
	b.inhibit = false
	b.sendLocked()
	b.mu.Unlock()
}

func (b *wBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {} // deprecated

func (b *wBalancer) ExitIdle() {
	b.mu.Lock()
	b.inhibit = true
	list := slices.Clone(b.list)
	b.mu.Unlock()
	for _, e := range list {
		e.exitIdle()
	}
	b.mu.Lock()
	b.inhibit = false
	b.sendLocked()
	b.mu.Unlock()
}

func (b *wBalancer) Close() {
	b.mu.Lock()
	b.closed = true
	if b.timer != nil {
		b.timer.Stop()
	}
	if b.smpTimer != nil {
		b.smpTimer.Stop()
	}
	b.sampling.Store(true) // no Done starts it again
	b.reach.Close()
	b.m.close(b.log)
	list := b.list
	b.list, b.spare = nil, nil
	for _, e := range list {
		e.removed = true
	}
	b.mu.Unlock()
	for _, e := range list {
		e.close()
	}
}

// markOffline takes an endpoint out of the picker at once; called from Done callbacks.
func (b *wBalancer) markOffline(e *endpoint) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.removed || !e.hasInfo || e.info.ID == "" {
		return
	}
	info := e.info
	if cur, ok := b.offline[info.ID]; ok && cur.sameRecord(info) {
		return
	}
	b.offline[info.ID] = info
	b.m.offline.Add(context.Background(), 1, b.offAttrs)
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
// or a sticky wait is running. With no ready child it sends the children's aggregated state
// (connecting, idle or failing) and a picker over the children in that state, as
// endpointsharding does. It does nothing while an update calls the children (the update
// sends at its end). Needs mu.
//
// Its cost is two passes over the endpoints, no lookup of their attributes, and a handful of
// allocations sized up front (the picker's sets).
func (b *wBalancer) sendLocked() {
	if b.closed || b.inhibit {
		return
	}
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	now := b.clock.Now()
	anyOff := len(b.offline) > 0
	blue, green := false, false
	b.allChans.reset()
	// A sticky request waits for a connecting endpoint of its color for stickyWait from when
	// it began connecting; after that the endpoint counts as unusable until it is READY.
	var waiting [2]bool // a usable endpoint of the color is connecting within its wait
	var refreshAt time.Time
	var nLive, nMarked int      // ready endpoints, not / already marked offline
	var liveOf, markedOf [2]int // of them, blue and green ones not degraded
	var nConnecting, nIdle, nFailed int
	for _, e := range b.list {
		info := &e.info
		ci := colorSlot(info.Color)
		blue = blue || ci == 0
		green = green || ci == 1
		if info.Channel != "" {
			b.allChans.add(info.Channel)
		}
		e.off = false
		if anyOff && e.hasInfo {
			_, e.off = b.offline[info.ID]
		}
		switch e.state.ConnectivityState {
		case connectivity.Ready:
			if e.off {
				nMarked++
				if ci >= 0 && !info.Degraded {
					markedOf[ci]++
				}
			} else {
				nLive++
				if ci >= 0 && !info.Degraded {
					liveOf[ci]++
				}
			}
		case connectivity.Connecting, connectivity.Idle:
			if e.state.ConnectivityState == connectivity.Idle {
				nIdle++
			} else {
				nConnecting++
			}
			if ci < 0 || info.Degraded || e.off {
				continue
			}
			t := e.since
			if t.IsZero() {
				t = now
			}
			if end := t.Add(b.stickyWait); now.Before(end) {
				waiting[ci] = true
				if refreshAt.IsZero() || end.Before(refreshAt) {
					refreshAt = end
				}
			}
		case connectivity.TransientFailure:
			nFailed++
		}
	}
	defer func() {
		if !refreshAt.IsZero() {
			b.timer = b.clock.AfterFunc(max(refreshAt.Sub(now), time.Millisecond), b.refresh)
		}
	}()

	if nLive+nMarked == 0 {
		b.reach.Set(reach.View{App: b.app, Channel: b.allChans.mostCommon(), Serving: waiting})
		b.cc.UpdateState(b.notReadyLocked(nConnecting, nIdle, nFailed))
		return
	}
	p := &picker{weightsOnly: b.weightsOnly.Load(), next: b.next, fallbacks: b.m.fallbacks, refusals: b.m.refusals, fbAttrs: b.fbAttrs, log: b.log, reach: b.reach}
	// Undecided requests go to the live endpoints, or to the marked ones if that is all
	// there is (they still serve). A sticky request's color set is its color's live
	// endpoints, or, if it has none, its marked ones: they serve what reaches them, and
	// crossing to the other color is worse (issue 12, case 3). Degraded endpoints (they
	// cannot keep their color's requests on their color downstream) are in no color set.
	allMarked := nLive == 0
	p.all.grow(max(nLive, nMarked*btoi(allMarked)))
	var colorMarked [2]bool
	for ci := range p.byColor {
		colorMarked[ci] = liveOf[ci] == 0
		p.byColor[ci].grow(max(liveOf[ci], markedOf[ci]*btoi(colorMarked[ci])))
	}
	b.readyChans.reset()
	warmup := time.Duration(0)
	for _, e := range b.list {
		if e.state.ConnectivityState != connectivity.Ready {
			continue
		}
		info := &e.info
		pk := e.state.Picker
		end := pickEnd{done: e.done, cell: e.cell, load: &e.load, base: info.Weight}
		ci := colorSlot(info.Color)
		if e.off == allMarked {
			p.all.addLoaded(pk, end, ci, info.EffectiveWeight(blue && green, now))
		}
		if ci >= 0 && !info.Degraded && e.off == colorMarked[ci] {
			p.byColor[ci].addLoaded(pk, end, ci, info.Weight*info.WarmupFactor(now))
		}
		if info.Channel != "" {
			b.readyChans.add(info.Channel)
		}
		if info.warming(now) && (warmup == 0 || info.Warmup < warmup) {
			warmup = info.Warmup
		}
	}
	p.all.finish()
	for ci := range p.byColor {
		p.byColor[ci].finish()
		p.pending[ci] = p.byColor[ci].len() == 0 && waiting[ci]
	}
	p.channel = b.readyChans.mostCommon()
	if p.channel != "" {
		if b.decisions == nil || b.decisions.Channel() != p.channel {
			b.decisions = sticky.NewCache(p.channel)
		}
		p.decisions = b.decisions
	}
	if p.all.total == 0 {
		for _, e := range b.list {
			st := e.state.ConnectivityState
			if (st == connectivity.Connecting || st == connectivity.Idle) && !e.off &&
				e.info.EffectiveWeight(blue && green, now) > 0 {
				// Every ready endpoint is drained but this weighted one connects: wait for it.
				p.waitWeighted = true
				break
			}
		}
	}
	p.prepare(b.app)
	b.reach.Set(reach.View{App: b.app, Channel: p.channel, Serving: [2]bool{
		p.byColor[0].len() > 0 || p.pending[0], p.byColor[1].len() > 0 || p.pending[1]}})
	b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: p})
	if warmup > 0 {
		// At least 20 steps over the shortest ramp, between 10 ms and 1 s apart.
		at := now.Add(min(max(warmup/20, 10*time.Millisecond), time.Second))
		if refreshAt.IsZero() || at.Before(refreshAt) {
			refreshAt = at
		}
	}
}

// colorSlot is 0 for blue, 1 for green, -1 for an endpoint of neither color.
func colorSlot(c deploy.Color) int {
	switch c {
	case deploy.Blue:
		return 0
	case deploy.Green:
		return 1
	}
	return -1
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// notReadyLocked is the state to send when no child is READY: CONNECTING if one connects,
// else IDLE if one is idle, else TRANSIENT_FAILURE, with a picker that takes turns over the
// children in that state (they answer ErrNoSubConnAvailable, start connecting, or fail with
// their error), as endpointsharding does. Needs mu.
func (b *wBalancer) notReadyLocked(connecting, idle, failed int) balancer.State {
	var st connectivity.State
	switch {
	case connecting > 0:
		st = connectivity.Connecting
	case idle > 0:
		st = connectivity.Idle
	case failed > 0:
		st = connectivity.TransientFailure
	default:
		err := b.noEndpointErrLocked()
		return balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: base.NewErrPicker(err)}
	}
	pickers := make([]balancer.Picker, 0, connecting+idle+failed)
	for _, e := range b.list {
		if e.state.ConnectivityState == st && e.state.Picker != nil {
			pickers = append(pickers, e.state.Picker)
		}
	}
	if len(pickers) == 0 {
		return balancer.State{ConnectivityState: connectivity.Connecting, Picker: base.NewErrPicker(balancer.ErrNoSubConnAvailable)}
	}
	return balancer.State{ConnectivityState: st, Picker: &turnPicker{pickers: pickers, next: uint32(b.next.Load())}}
}

// noEndpointErrLocked is why a pick fails when the resolver named no endpoint: the resolver's
// error if it reported one, else that no instance of the app is registered (for a
// switchyard:/// target) or that the resolver named none. Both name the app. Needs mu.
func (b *wBalancer) noEndpointErrLocked() error {
	switch {
	case b.resolveErr != nil:
		return fmt.Errorf("switchyard balancer: no endpoint of app %q: name resolver error: %w", b.app, b.resolveErr)
	case b.opts.Target.URL.Scheme == deploy.Scheme:
		return fmt.Errorf("switchyard balancer: no instance of app %q is registered (the resolver named no endpoint); "+
			"start one, or check the app name and the registry prefix", b.app)
	}
	return fmt.Errorf("switchyard balancer: the resolver named no endpoint for %q", b.opts.Target.String())
}

// turnPicker takes turns over its children's pickers: the picker while nothing is READY.
type turnPicker struct {
	pickers []balancer.Picker
	next    uint32
}

func (p *turnPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	i := atomic.AddUint32(&p.next, 1)
	return p.pickers[i%uint32(len(p.pickers))].Pick(info)
}

// channelCounts counts endpoints per release channel without a map: there are one or two.
type channelCounts struct {
	names []string
	n     []int
}

func (c *channelCounts) reset() { c.names, c.n = c.names[:0], c.n[:0] }

func (c *channelCounts) add(ch string) {
	for i, name := range c.names {
		if name == ch {
			c.n[i]++
			return
		}
	}
	c.names = append(c.names, ch)
	c.n = append(c.n, 1)
}

// mostCommon returns the channel most endpoints name (the smallest name on a tie), "" if none.
func (c *channelCounts) mostCommon() string {
	best, n := "", 0
	for i, name := range c.names {
		if c.n[i] > n || c.n[i] == n && name < best {
			best, n = name, c.n[i]
		}
	}
	return best
}

// endpointKey identifies an endpoint across resolver updates by its set of addresses, as
// endpointsharding does: the address itself for the usual one-address endpoint.
func endpointKey(ep resolver.Endpoint) string {
	switch len(ep.Addresses) {
	case 0:
		return ""
	case 1:
		return ep.Addresses[0].Addr
	}
	addrs := make([]string, len(ep.Addresses))
	for i, a := range ep.Addresses {
		addrs[i] = a.Addr
	}
	slices.Sort(addrs)
	return strings.Join(slices.Compact(addrs), "\x00")
}

func isOffline(md metadata.MD) bool {
	for _, v := range md[deploy.OfflineHeader] {
		if v == "1" {
			return true
		}
	}
	return false
}
