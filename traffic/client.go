package traffic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/dispatch"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
	"github.com/switchyard-go/switchyard/internal/sticky"
	"github.com/switchyard-go/switchyard/registry"
)

const meterName = "github.com/switchyard-go/switchyard/traffic"

// ErrEtcdUnavailable is wrapped when etcd did not answer in time, the connection broke, or
// it had no leader. It is the same value as registry.ErrEtcdUnavailable.
var ErrEtcdUnavailable = registry.ErrEtcdUnavailable

// Config configures a rule Client.
type Config struct {
	// Client is the etcd client. Required; not closed by the rule Client.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// RequestTimeout caps each etcd request. Default registry.DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// Logger receives skipped rules (Warn; Error for a key with no last good version), watch
	// restarts (Info) and handler panics (Error). Default slog.Default().
	Logger *slog.Logger
	// MeterProvider provides the counter switchyard.traffic.rules.skipped. Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
}

func (c *Config) setDefaults() error {
	if c.Client == nil {
		return errors.New("traffic: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if c.Prefix == "" {
		c.Prefix = deploy.DefaultPrefix
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = registry.DefaultRequestTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	return nil
}

// Rules is the rule client every instance embeds (DESIGN.md "Events"): it loads all rules
// once, then follows etcd's watch; every read is an in-memory read that takes no lock.
// Subscribers get each channel's events in order, each from its own goroutine, so a slow
// subscriber never holds up the watch or the others.
//
// Locking: rules are read from an immutable snapshot behind an atomic pointer. mu guards
// subs and serializes swapping the snapshot with queueing its events, so a new subscriber
// never misses or doubles an event; queueing never blocks and no user code runs under mu.
type Rules struct {
	cfg     Config
	kv      *kvwatch.Watcher[item]
	snap    atomic.Pointer[snapshot]
	nSkip   atomic.Uint64
	skipped metric.Int64Counter
	ready   chan error // the first list's outcome, once
	// headers caches the baggage header of a decision value (decisionHeader); nil for one
	// that does not fit the limits.
	headers slotCache[*header]
	// random draws the stickiness decisions: uniform in [0, 1), safe for concurrent use.
	// math/rand/v2's Float64; tests replace it (export_test.go) to check the decision rate
	// deterministically.
	random func() float64

	mu   sync.Mutex
	subs map[*subscription]struct{}
}

type snapshot struct {
	rules map[string]Rule   // by channel
	open  map[string]string // app → the open channel it is in
	list  []Rule            // by channel
	bad   []Unreadable      // by channel
	rev   int64
	// next is closed when this snapshot is replaced (Updated).
	next chan struct{}
	// decided holds, for each open channel, the baggage of a blue and of a green decision
	// alone and their headers (indexed by sticky.Index); headers maps those decision values
	// to their headers. The client interceptors use them instead of building them per call.
	decided map[string]*[2]decided
	headers map[string]*header
}

// item is what the watcher keeps for one key: its rule, and, while its latest value cannot be
// read, what is known of that value. A key that has never been read has only bad; one read
// before keeps its last good rule next to bad. Keeping unreadable keys in the watcher's set
// (rather than skipping them there) is what makes their repair and their deletion visible.
type item struct {
	rule Rule
	bad  *Unreadable
}

func (a item) equal(b item) bool {
	if !a.rule.Equal(b.rule) || (a.bad == nil) != (b.bad == nil) {
		return false
	}
	return a.bad == nil || a.bad.equal(*b.bad)
}

// Unreadable is a rule key that exists in etcd but whose latest value could not be read: not
// JSON, a schema version this reader does not know ("v":2 from a newer tool), or a rule that
// fails validation.
type Unreadable struct {
	// Key is the etcd key, e.g. "/switchyard/channels/trade".
	Key string
	// Channel is the channel the key names.
	Channel string
	// Apps are the apps the value names, read leniently from its "apps" field alone; nil
	// when not even that could be read, and then the value may name any app.
	Apps []string
	// LastGood says the Client read an earlier version of the key, which stays in force.
	LastGood bool
	// Err says why the value could not be read; it wraps ErrMalformedRule.
	Err error
}

func (u Unreadable) equal(o Unreadable) bool {
	return u.Key == o.Key && u.Channel == o.Channel && slices.Equal(u.Apps, o.Apps) &&
		u.LastGood == o.LastGood && u.Err.Error() == o.Err.Error()
}

// mayName reports whether the unreadable value may name app: it does when its apps could be
// read and include app, or when they could not be read at all.
func (u Unreadable) mayName(app string) bool {
	return u.Apps == nil || slices.Contains(u.Apps, app)
}

type subscription struct {
	channel string // "" for all
	q       *dispatch.Queue[Event]
}

// NewRules loads every rule and starts following them. It fails, with an error wrapping
// ErrEtcdUnavailable, if etcd cannot be read within RequestTimeout (or ctx ends first); once
// started, it rides out etcd outages with the rules it has and converges when etcd is back.
func NewRules(ctx context.Context, cfg Config) (*Rules, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	skipped, err := cfg.MeterProvider.Meter(meterName).Int64Counter("switchyard.traffic.rules.skipped",
		metric.WithDescription("Rule records in etcd that could not be decoded or validated and were skipped."),
		metric.WithUnit("{record}"))
	if err != nil {
		return nil, fmt.Errorf("traffic: create metric: %w", err)
	}
	c := &Rules{cfg: cfg, skipped: skipped, ready: make(chan error, 1), random: rand.Float64, headers: newSlotCache[*header](), subs: map[*subscription]struct{}{}}
	c.snap.Store(newSnapshot(nil, 0, cfg.Logger))
	c.kv = kvwatch.New(kvwatch.Config[item]{
		Client:         cfg.Client,
		Prefix:         deploy.ChannelsPrefix(cfg.Prefix),
		Decode:         c.decode,
		Equal:          item.equal,
		OnChange:       c.apply,
		PerEvent:       true, // every rule change gets its own events
		OnListError:    func(err error) { c.signal(err) },
		RequestTimeout: cfg.RequestTimeout,
		Logger:         cfg.Logger,
	})
	select {
	case err = <-c.ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		c.kv.Close()
		return nil, fmt.Errorf("traffic: load rules: %w", err)
	}
	return c, nil
}

func (c *Rules) signal(err error) {
	select {
	case c.ready <- err:
	default:
	}
}

// Close stops following etcd, stops every subscription and waits for running handlers.
func (c *Rules) Close() {
	c.kv.Close()
	c.mu.Lock()
	subs := c.subs
	c.subs = map[*subscription]struct{}{}
	c.mu.Unlock()
	for s := range subs {
		s.q.Stop()
	}
	for s := range subs {
		<-s.q.Done()
	}
}

// Rule returns a channel's rule.
func (c *Rules) Rule(channel string) (Rule, bool) {
	r, ok := c.snap.Load().rules[channel]
	return r, ok
}

// ChannelOf returns the rule of the open channel app is in; ok is false when app is in no
// open channel it can read. It allocates nothing. A rule key that exists but has never been
// read does not count here: ask UnreadableFor before acting on "no open channel".
func (c *Rules) ChannelOf(app string) (r Rule, ok bool) {
	s := c.snap.Load()
	ch, ok := s.open[app]
	if !ok {
		return Rule{}, false
	}
	return s.rules[ch], true
}

// The Client is what a resolver reads a rule from.
var _ registry.Rules = (*Rules)(nil)

// Traffic returns the open release channel app is in and the color weights of its rule
// (Weights of its BluePercent: W/(100+W) = percent/100, base 100); ok is false, with "" and
// zeros, when app is in no open channel the Client can read (as ChannelOf). It implements
// registry.Rules, so a resolver given the Client (registry.ResolverConfig.Rules) takes each
// endpoint's channel and traffic weight from the rule itself, not from the instances'
// re-put records; Updated says when to ask again. It takes no lock and allocates nothing.
func (c *Rules) Traffic(app string) (channel string, blue, green float64, ok bool) {
	r, ok := c.ChannelOf(app)
	if !ok {
		return "", 0, 0, false
	}
	blue, green = Weights(r.BluePercent)
	return r.Channel, blue, green, true
}

// Rules returns every rule, by channel name. The slice is shared: do not modify it.
func (c *Rules) Rules() []Rule { return c.snap.Load().list }

// Revision is the etcd revision the rules reflect.
func (c *Rules) Revision() int64 { return c.snap.Load().rev }

// Skipped is how many rule records have been skipped as malformed.
func (c *Rules) Skipped() uint64 { return c.nSkip.Load() }

// Unreadable returns every rule key whose latest value could not be read, by channel, with or
// without a last good version. The slice is shared: do not modify it.
func (c *Rules) Unreadable() []Unreadable { return c.snap.Load().bad }

// UnreadableFor returns the unreadable rule keys that may decide app's traffic and of which
// the Client has no last good version: those whose value names app (read leniently from its
// "apps" field), and those whose apps cannot be read at all, unless app is in an open channel
// the Client can read (an app is in at most one open channel, so such a key cannot be the one
// that decides its weight). While it is not empty the Client cannot tell app's channel and
// traffic weight: ChannelOf's "no open channel" may be wrong, and an instance of app that is
// starting must not register as if no release were open (lifecycle waits). A key read once
// keeps its last good rule and is not returned.
func (c *Rules) UnreadableFor(app string) []Unreadable {
	s := c.snap.Load()
	var out []Unreadable
	for _, u := range s.bad {
		if u.LastGood || !u.mayName(app) {
			continue
		}
		if _, open := s.open[app]; open && u.Apps == nil {
			continue
		}
		out = append(out, u)
	}
	return out
}

// Updated returns a channel that is closed when the rules next change (a rule, its events, or
// the set of unreadable keys), for a caller that waits for a rule to become readable: take
// Updated, then read, then wait on it, and no change is missed.
func (c *Rules) Updated() <-chan struct{} { return c.snap.Load().next }

// Subscribe calls fn with the events of channel ("" for every channel), in order, from a
// goroutine of its own. It first replays the events that lead from a closed 50 % channel to
// the current rule (e.g. OnStart, OnFlowChange 50→0, OnEnterAllGreen for a channel whose blue
// half is drained), so a late subscriber starts from the same view as an early one. A panic
// in fn is recovered and logged. Call the returned function to unsubscribe; it does not wait
// for a running fn and may be called from fn.
func (c *Rules) Subscribe(channel string, fn func(Event)) (unsubscribe func()) {
	s := &subscription{channel: channel}
	s.q = dispatch.Start(fn, func(p any) {
		c.cfg.Logger.Error("traffic: event handler panicked; it keeps receiving events", "channel", channel, "panic", p)
	})
	c.mu.Lock()
	for _, r := range c.snap.Load().list {
		if channel == "" || channel == r.Channel {
			for _, e := range diff(r.Channel, Rule{}, false, r, true) {
				s.q.Push(e)
			}
		}
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.subs, s)
		c.mu.Unlock()
		s.q.Stop()
	}
}

// decode reads one rule value. It runs on the watcher's goroutine, where the current snapshot
// is the watcher's set as last published, so it holds the key's last good rule if any. It
// never fails: a value that cannot be read becomes an item with bad set (and the last good
// rule, if there is one).
func (c *Rules) decode(channel string, val []byte) (item, error) {
	r, err := Unmarshal(val)
	if err == nil && r.Channel != channel {
		err = malformed(fmt.Errorf("record says channel %q but is stored under %q", r.Channel, channel))
	}
	if err == nil {
		return item{rule: r}, nil
	}
	u := &Unreadable{Key: deploy.ChannelKey(c.cfg.Prefix, channel), Channel: channel, Apps: lenientApps(val), Err: err}
	last, ok := c.snap.Load().rules[channel]
	u.LastGood = ok
	c.skip(*u)
	return item{rule: last, bad: u}, nil
}

// lenientApps reads only the "apps" field of a value that is not a valid rule; nil if it
// cannot, or if it names no app.
func lenientApps(val []byte) []string {
	var rec struct {
		Apps []string `json:"apps"`
	}
	if json.Unmarshal(val, &rec) != nil || len(rec.Apps) == 0 {
		return nil
	}
	slices.Sort(rec.Apps)
	return slices.Compact(rec.Apps)
}

func (c *Rules) skip(u Unreadable) {
	c.nSkip.Add(1)
	c.skipped.Add(context.Background(), 1)
	if u.LastGood {
		c.cfg.Logger.Warn("traffic: skipping malformed rule; keeping the last good version", "key", u.Key, "err", u.Err)
		return
	}
	apps := any(u.Apps)
	if u.Apps == nil {
		apps = "unknown (any app)"
	}
	c.cfg.Logger.Error("traffic: skipping malformed rule; no earlier version of it was read, so the channel and traffic weight of the apps it may name are unknown and their instances will not start until it is repaired or deleted",
		"key", u.Key, "apps", apps, "err", u.Err)
}

// apply swaps in the new rules and queues the events of the net change of every channel:
// after a re-list that is the change across the whole gap.
func (c *Rules) apply(items []item, rev int64) {
	rules := make([]Rule, 0, len(items))
	var bad []Unreadable
	for _, it := range items {
		if it.bad == nil || it.bad.LastGood {
			rules = append(rules, it.rule)
		}
		if it.bad != nil {
			bad = append(bad, *it.bad)
		}
	}
	next := newSnapshot(rules, rev, c.cfg.Logger)
	next.bad = bad
	c.mu.Lock()
	prev := c.snap.Swap(next)
	close(prev.next)
	var events []Event
	for ch, r := range next.rules {
		old, had := prev.rules[ch]
		events = append(events, diff(ch, old, had, r, true)...)
	}
	for ch, old := range prev.rules {
		if _, ok := next.rules[ch]; !ok {
			events = append(events, diff(ch, old, true, Rule{}, false)...)
		}
	}
	for s := range c.subs {
		for _, e := range events {
			if s.channel == "" || s.channel == e.Channel {
				s.q.Push(e)
			}
		}
	}
	c.mu.Unlock()
	c.signal(nil)
}

func newSnapshot(rules []Rule, rev int64, log *slog.Logger) *snapshot {
	s := &snapshot{rules: make(map[string]Rule, len(rules)), open: map[string]string{}, list: rules, rev: rev, next: make(chan struct{}),
		decided: map[string]*[2]decided{}, headers: map[string]*header{}}
	for _, r := range rules {
		s.rules[r.Channel] = r
		if !r.Releasing {
			continue
		}
		s.addDecided(r.Channel)
		for _, app := range r.Apps {
			if other, dup := s.open[app]; dup {
				// The controller refuses this; someone wrote etcd by hand. Keep the first.
				log.Warn("traffic: app is in two open channels; following the first", "app", app, "channels", []string{other, r.Channel})
				continue
			}
			s.open[app] = r.Channel
		}
	}
	return s
}

// addDecided builds channel's decided baggage and headers.
func (s *snapshot) addDecided(channel string) {
	var d [2]decided
	for _, color := range []deploy.Color{deploy.Blue, deploy.Green} {
		value := channel + "=" + string(color)
		m, err := baggage.NewMemberRaw(deploy.BaggageKey, value)
		if err != nil {
			return // not for a valid channel name
		}
		b, err := baggage.New(m)
		if err != nil {
			return
		}
		d[sticky.Index(color)] = newDecided(b)
		s.headers[value] = d[sticky.Index(color)].header
	}
	s.decided[channel] = &d
}
