package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"

	swbalancer "github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// meterName is the instrumentation scope of this package's metrics.
const meterName = "github.com/switchyard-go/switchyard/registry"

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Client is the etcd client. Required. The Watcher does not close it.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// App is the app whose instances to follow. Required.
	App string
	// OnUpdate receives every change of the instance set, in order, from the Watcher's
	// goroutine. Required. It holds up the Watcher while it runs, so it should be quick.
	OnUpdate func(Snapshot)
	// RequestTimeout caps each list request. Default DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// Logger receives skipped records (Warn) and watch restarts (Info). Default
	// slog.Default().
	Logger *slog.Logger
	// MeterProvider provides the counter switchyard.registry.records.skipped. Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// HoldExpired is how long the last instance of its color (in the app) whose record
	// vanished with its lease (the lease expired, or was revoked without Deregister) stays
	// in the set as a suspect, unless it registers again first; past it, suspects leave
	// unless none of the app's instances would be left. A record deleted while its lease
	// lives (Deregister), or while another instance of its color remains, leaves at once.
	// Default DefaultHoldExpired (30 s); negative: no hold, every deletion leaves at once.
	HoldExpired time.Duration
}

// DefaultHoldExpired is the default of WatcherConfig.HoldExpired and
// ResolverConfig.HoldExpired.
const DefaultHoldExpired = 30 * time.Second

// Snapshot is the complete instance set of one app after a change.
type Snapshot struct {
	// Instances are every registered instance, plus the suspects kept by the hold rule
	// (Held), sorted by ID. Never nil when Err is nil.
	Instances []Record
	// Revision is the etcd revision the set reflects.
	Revision int64
	// Err is set, and Instances nil, only while the Watcher has never listed the app:
	// etcd could not be reached. Once it has a set, outages are ridden out silently with
	// the last good set.
	Err error
	// Held are the IDs, sorted, of the instances in Instances whose record vanished with
	// its lease and that are kept as suspects (WatcherConfig.HoldExpired).
	Held []string
}

// A Watcher follows the instances of one app: it lists them, then watches from the list's
// revision + 1, so no change is lost in between. When the watch fails (etcd down, a lost
// leader, history compacted while it was away) it lists again, with backoff, and carries on;
// until it succeeds it keeps the last good set, so an outage never empties it. A record it
// cannot decode is skipped, logged and counted, and the last good version of that instance
// stays in the set.
//
// Locking: mu guards last; the rest belongs to the watch goroutine (internal/kvwatch).
type Watcher struct {
	kv      *kvwatch.Watcher[*inst]
	app     string
	log     *slog.Logger
	onUp    func(Snapshot) // the user's OnUpdate, or nil
	onSet   func(instSet)  // the resolver's, or nil
	skipped metric.Int64Counter
	attrs   metric.AddOption
	nSkip   atomic.Uint64
	// ruled: the resolver takes channel and traffic weight from Rules, so a record change of
	// only those is no change (kvwatch keeps the item it has and calls nothing).
	ruled bool

	mu   sync.Mutex
	last instSet

	// Owned by the watch goroutine (kvwatch's callbacks).
	cli     *clientv3.Client
	timeout time.Duration
	hold    time.Duration
	live    []*inst // what etcd has, sorted by ID
	held    map[string]heldInstance
	timer   *time.Timer // republishes when the earliest hold ends
	decoded Record      // handed from decode to stamp, which kvwatch calls right after it
}

// instSet is an Update as the Watcher keeps it: the records are shared with kvwatch's set
// (one copy of each record, which the resolver shares too) and treated as read-only.
type instSet struct {
	refs []*inst // sorted by ID
	held []string
	rev  int64
	err  error
	app  string
	ok   bool // set by emit: not the zero instSet
}

// inst is one instance record as the Watcher keeps it, compactly, since a resolver keeps one
// per endpoint: the fields the balancer reads live once, as the balancer.EndpointInfo in attrs,
// which the resolver's endpoints share; the rarely set ones behind a pointer. Read-only once
// stamped.
type inst struct {
	ID    string
	Addr  string
	attrs *attributes.Attributes // balancer.EndpointInfo (SetEndpointInfo's), with Epoch
	more  *instMore              // nil: no Version, Metadata or Degraded
	admin string                 // Record.Admin (set by every lifecycle instance, so not in more)
	lease int64                  // of the key as read; 0: none
}

type instMore struct {
	version, degraded string
	metadata          map[string]string
}

func (p *inst) info() swbalancer.EndpointInfo {
	info, _ := swbalancer.EndpointInfoFrom(resolver.Endpoint{Attributes: p.attrs})
	return info
}

// instance is the record of p, an instance of app.
func (p *inst) instance(app string) Record {
	info := p.info()
	in := Record{ID: p.ID, App: app, Addr: p.Addr, Color: info.Color, Channel: info.Channel,
		Weight: info.Weight, TrafficWeight: info.TrafficWeight, StartTime: info.StartTime, Warmup: info.Warmup,
		Epoch: info.Epoch, Admin: p.admin}
	if m := p.more; m != nil {
		in.Version, in.Degraded, in.Metadata = m.version, m.degraded, m.metadata
	}
	return in
}

// newInst is in, stamped with its key's create revision and lease.
func newInst(in *Record, createRev, lease int64) *inst {
	p := &inst{ID: in.ID, Addr: in.Addr, admin: in.Admin, lease: lease}
	if in.Version != "" || in.Degraded != "" || len(in.Metadata) > 0 {
		p.more = &instMore{version: in.Version, degraded: in.Degraded, metadata: in.Metadata}
	}
	p.attrs = swbalancer.SetEndpointInfo(resolver.Endpoint{}, swbalancer.EndpointInfo{
		ID: in.ID, Color: in.Color, Channel: in.Channel, Weight: in.Weight,
		TrafficWeight: in.TrafficWeight, StartTime: in.StartTime, Warmup: in.Warmup, Epoch: createRev,
		Degraded: in.Degraded != "",
	}).Attributes
	return p
}

// equal tells an unchanged record from a changed one; with ignoreRule, a change of only the
// channel and traffic weight is none.
func (p *inst) equal(o *inst, ignoreRule bool) bool {
	if p.ID != o.ID || p.Addr != o.Addr || p.admin != o.admin || (p.more == nil) != (o.more == nil) {
		return false
	}
	if p.more != nil && (p.more.version != o.more.version || p.more.degraded != o.more.degraded ||
		!maps.Equal(p.more.metadata, o.more.metadata)) {
		return false
	}
	a, b := p.info(), o.info()
	if ignoreRule {
		a.Channel, a.TrafficWeight = b.Channel, b.TrafficWeight
	}
	return a.Equal(b)
}

// update copies the set into an Update.
func (s instSet) update() Snapshot {
	if !s.ok {
		return Snapshot{}
	}
	if s.err != nil {
		return Snapshot{Err: s.err}
	}
	u := Snapshot{Instances: make([]Record, len(s.refs)), Revision: s.rev, Held: s.held}
	for i, p := range s.refs {
		u.Instances[i] = p.instance(s.app)
	}
	return u
}

// heldInstance is an instance kept although its record vanished with its lease.
type heldInstance struct {
	in    *inst
	until time.Time
}

// NewWatcher checks cfg and starts following the app. The first Update arrives once the
// first list succeeds (or, with Err set, once it fails). Close stops it.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.OnUpdate == nil {
		return nil, errors.New("registry: WatcherConfig.OnUpdate is nil; it is how the Watcher reports the instance set")
	}
	return newWatcher(cfg, nil, 0, false)
}

// newWatcher starts a Watcher that reports to cfg.OnUpdate if set and to onSet if not nil,
// coalescing watch responses that follow each other within coalesce (kvwatch.Config). ruled:
// a record change of only the channel and traffic weight is no change (a resolver with Rules
// takes them from the rule), so it costs a decode and a comparison, nothing more.
func newWatcher(cfg WatcherConfig, onSet func(instSet), coalesce time.Duration, ruled bool) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("registry: WatcherConfig.Client is nil; pass a connected *clientv3.Client")
	}
	if err := validName("app", cfg.App); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if err := validatePrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	skipped, err := cfg.MeterProvider.Meter(meterName).Int64Counter("switchyard.registry.records.skipped",
		metric.WithDescription("Instance records in etcd that could not be decoded or validated and were skipped."),
		metric.WithUnit("{record}"))
	if err != nil {
		return nil, fmt.Errorf("registry: create metric: %w", err)
	}
	if cfg.HoldExpired == 0 {
		cfg.HoldExpired = DefaultHoldExpired
	}
	w := &Watcher{
		cli:     cfg.Client,
		timeout: cfg.RequestTimeout,
		hold:    cfg.HoldExpired,
		held:    map[string]heldInstance{},
		app:     cfg.App,
		log:     cfg.Logger.With("app", cfg.App),
		onUp:    cfg.OnUpdate,
		onSet:   onSet,
		ruled:   ruled,
		skipped: skipped,
		attrs:   metric.WithAttributeSet(attribute.NewSet(attribute.String("app", cfg.App))),
	}
	w.kv = kvwatch.New(kvwatch.Config[*inst]{
		Client:         cfg.Client,
		Prefix:         deploy.AppPrefix(cfg.Prefix, cfg.App),
		Decode:         w.decode,
		Stamp:          func(_ *inst, createRev, lease int64) *inst { return newInst(&w.decoded, createRev, lease) },
		Equal:          func(a, b *inst) bool { return a.equal(b, w.ruled) },
		OnChange:       w.change,
		Coalesce:       coalesce,
		OnListError:    func(err error) { w.emit(instSet{err: fmt.Errorf("registry: %w", err)}) },
		OnSkip:         w.skip,
		RequestTimeout: cfg.RequestTimeout,
		Logger:         w.log,
	})
	return w, nil
}

// Close stops the Watcher and waits for its goroutine. OnUpdate is not called after Close
// returns. It is safe to call more than once.
func (w *Watcher) Close() {
	w.kv.Close()
	if w.timer != nil {
		w.timer.Stop()
	}
}

// Last returns the last Update given to OnUpdate (zero before the first).
func (w *Watcher) Last() Snapshot {
	w.mu.Lock()
	last := w.last
	w.mu.Unlock()
	return last.update()
}

// Skipped is how many records this Watcher has skipped as malformed.
func (w *Watcher) Skipped() uint64 { return w.nSkip.Load() }

// Refresh asks a Watcher that is waiting to retry after a failure to retry now. It does
// nothing to a healthy watch (etcd's watch already tells it everything).
func (w *Watcher) Refresh() { w.kv.Refresh() }

// decode reads the record stored under the instance key id into w.decoded, for the Stamp that
// kvwatch calls right after it to make the inst. The record shares its ID, App and Color
// strings with the key, the Watcher and the constants, to keep one copy of each.
func (w *Watcher) decode(id string, val []byte) (*inst, error) {
	in, err := unmarshalAt(w.app, id, val)
	if err != nil {
		return nil, err
	}
	in.ID, in.App = id, w.app
	switch in.Color {
	case deploy.Blue:
		in.Color = deploy.Blue
	case deploy.Green:
		in.Color = deploy.Green
	}
	w.decoded = in
	return nil, nil
}

func (w *Watcher) skip(key string, err error) {
	w.nSkip.Add(1)
	w.skipped.Add(context.Background(), 1, w.attrs)
	w.log.Warn("registry: skipping malformed instance record; keeping the last good version", "key", key, "err", err)
}

// change receives etcd's set from kvwatch and publishes it with the held suspects.
//
// The hold rule: an instance whose record is gone from etcd while another instance of its
// color (in this app) is still there leaves at once. The last one of its color is held
// (kept in the set) when its record vanished with its lease, because then nobody
// deregistered it: its lease expired (etcd or the instance was cut off, or it crashed) or
// was revoked without Deregister. A record deleted while its lease lives, which is what
// Deregister does, leaves at once. Held instances leave when they register again (their new
// record replaces them), or when the hold ends, except that while no instance of the app is
// left in etcd they all stay: a partition never empties the set. gRPC does not pick an
// endpoint it cannot connect to, so a held instance that really died costs connection
// attempts, not calls. Only the last of a color costs a lease lookup (one etcd request)
// before its removal is published.
func (w *Watcher) change(items []*inst, rev int64) {
	now := time.Now()
	if len(w.held) > 0 {
		for _, in := range items {
			delete(w.held, in.ID) // registered again
		}
	}
	// Both sets are sorted by ID: walk them together to find the instances that left.
	j := 0
	for _, in := range w.live {
		for j < len(items) && items[j].ID < in.ID {
			j++
		}
		if j < len(items) && items[j].ID == in.ID {
			continue
		}
		if w.hold > 0 && !colorLeft(items, in.info().Color) && w.vanishedWithLease(in) {
			w.held[in.ID] = heldInstance{in: in, until: now.Add(w.hold)}
			w.log.Warn("registry: instance record vanished with its lease (expired, or revoked without Deregister); keeping the instance as a suspect until it registers again",
				"instance", in.ID, "hold", w.hold)
		}
	}
	w.live = items
	var earliest time.Time
	for id, h := range w.held {
		switch {
		case len(items) > 0 && !now.Before(h.until):
			delete(w.held, id)
			w.log.Info("registry: suspect instance did not register again within the hold; dropping it", "instance", id)
		case len(items) > 0 && (earliest.IsZero() || h.until.Before(earliest)):
			earliest = h.until
		}
	}
	if !earliest.IsZero() {
		if w.timer == nil {
			w.timer = time.AfterFunc(earliest.Sub(now), w.kv.Republish)
		} else {
			w.timer.Reset(earliest.Sub(now))
		}
	}
	s := instSet{refs: items, rev: rev}
	if len(w.held) > 0 {
		s.refs = slices.Clone(items)
		for id, h := range w.held {
			s.refs = append(s.refs, h.in)
			s.held = append(s.held, id)
		}
		slices.SortFunc(s.refs, func(a, b *inst) int { return cmp.Compare(a.ID, b.ID) })
		slices.Sort(s.held)
	}
	w.emit(s)
}

// colorLeft reports whether set has an instance of color c.
func colorLeft(set []*inst, c deploy.Color) bool {
	for _, in := range set {
		if in.info().Color == c {
			return true
		}
	}
	return false
}

// vanishedWithLease reports whether the deleted record of in went with its lease: true if
// etcd no longer has the lease, or cannot say; false for a record without a lease or whose
// lease lives (deleted on purpose).
func (w *Watcher) vanishedWithLease(in *inst) bool {
	if in.lease == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	resp, err := w.cli.TimeToLive(ctx, clientv3.LeaseID(in.lease))
	return err != nil || resp.TTL < 0 // -1: not found; 0 is a live lease's last second
}

func (w *Watcher) emit(s instSet) {
	s.ok, s.app = true, w.app
	w.mu.Lock()
	w.last = s
	w.mu.Unlock()
	if w.onUp != nil {
		w.onUp(s.update())
	}
	if w.onSet != nil {
		w.onSet(s)
	}
}
