package dashboard

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
)

// Defaults of Config.
const (
	DefaultPoll    = time.Second
	DefaultTimeout = 800 * time.Millisecond
)

// maxStatsBytes bounds the /stats document read from an instance (a full minute is ~20 KB).
const maxStatsBytes = 1 << 20

// Config configures a Dashboard.
type Config struct {
	// Client is the etcd client the rules and instance records are read with. Required; not
	// closed by the Dashboard.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// Channel is the channel to show. Default "": every channel, releases open first.
	Channel string
	// Poll is how often the instances are polled and a new View published. Default
	// DefaultPoll (1 s).
	Poll time.Duration
	// Timeout bounds each instance's /stats request, and each app's read of its instance
	// records from etcd. Default DefaultTimeout (800 ms). A poll lasts at most about twice
	// Timeout, however many instances do not answer.
	Timeout time.Duration
	// Logger receives the rule client's messages (watch restarts, unreadable rules). What
	// instances answer, or not, is shown in the View, not logged. Default slog.Default().
	Logger *slog.Logger
	// HTTPClient reads the instances' /stats. Default: a client of the Dashboard's own,
	// whose idle connections are closed when Run returns.
	HTTPClient *http.Client
}

// Dashboard polls the instances of a channel's apps and publishes a View per poll. Run
// polls; Snapshot, Updated and Handler read what it published, from any goroutine.
//
// Locking: the published View and the channel that announces the next one sit behind an
// atomic pointer, swapped once per poll. mu guards events, which the rule subscription
// appends to; col is only used by Run's goroutine.
type Dashboard struct {
	cfg     Config
	col     *Collector
	cur     atomic.Pointer[published]
	started atomic.Bool
	stopped chan struct{} // closed when Run returns

	mu     sync.Mutex
	events map[string][]Event // by channel, oldest first, at most MaxEvents each
}

type published struct {
	view View
	next chan struct{} // closed when a newer view is published
}

// New checks cfg and returns a Dashboard that has not polled yet: run it with Run.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Client == nil {
		return nil, errors.New("dashboard: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if cfg.Channel != "" {
		if err := deploy.ValidateName("channel", cfg.Channel); err != nil {
			return nil, fmt.Errorf("dashboard: Config.Channel: %w", err)
		}
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Dashboard{cfg: cfg, stopped: make(chan struct{}), events: map[string][]Event{}}
	d.col = newCollector(cfg)
	d.cur.Store(&published{view: View{SpanS: int(Span / time.Second), Channels: []Channel{}}, next: make(chan struct{})})
	return d, nil
}

// Snapshot returns the View of the last poll (an empty one before the first). Its slices are
// shared: do not modify them.
func (d *Dashboard) Snapshot() View { return d.cur.Load().view }

// Updated returns a channel that is closed when the next View is published: take Updated,
// then Snapshot, then wait on it, and no View is missed.
func (d *Dashboard) Updated() <-chan struct{} { return d.cur.Load().next }

// Run follows the rules and polls every Poll until ctx ends, then returns nil. It fails if
// the rules cannot be loaded (the error wraps registry.ErrEtcdUnavailable when etcd did not
// answer). Once running it rides out etcd outages: each app keeps the instances of its last
// successful read, and App.Error says so. Run may be called once.
func (d *Dashboard) Run(ctx context.Context) error {
	if !d.started.CompareAndSwap(false, true) {
		return errors.New("dashboard: Run called twice; a Dashboard runs once")
	}
	defer close(d.stopped)
	defer d.col.Close()
	rules, err := traffic.NewRules(ctx, traffic.Config{Client: d.cfg.Client, Prefix: d.cfg.Prefix, Logger: d.cfg.Logger})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("dashboard: %w", err)
	}
	defer rules.Close()
	unsubscribe := rules.Subscribe(d.cfg.Channel, d.record)
	defer unsubscribe()
	tick := time.NewTicker(d.cfg.Poll)
	defer tick.Stop()
	for {
		d.poll(ctx, rules.Rules())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// record keeps a rule event for the timeline.
func (d *Dashboard) record(ev traffic.Event) {
	at := ev.Rule.UpdatedAt
	if at.IsZero() {
		at = time.Now()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	list := append(d.events[ev.Channel], Event{At: at, Kind: ev.Kind.String(), Old: ev.Old, New: ev.New, Reason: ev.Rule.Reason})
	if len(list) > MaxEvents {
		list = slices.Clone(list[len(list)-MaxEvents:])
	}
	d.events[ev.Channel] = list
}

// poll reads the instances of the shown channels' apps and their /stats, all in parallel,
// and publishes the View.
func (d *Dashboard) poll(ctx context.Context, all []traffic.Rule) {
	start := time.Now()
	var rules []traffic.Rule
	for _, r := range all {
		if d.cfg.Channel == "" || r.Channel == d.cfg.Channel {
			rules = append(rules, r)
		}
	}
	var apps []string
	for _, r := range rules {
		apps = append(apps, r.Apps...)
	}
	slices.Sort(apps)
	apps = slices.Compact(apps)
	samples, appErrs := d.col.Poll(ctx, apps)
	if ctx.Err() != nil {
		return // ended mid-poll: the figures are cut short, keep the last view
	}
	appErr := map[string]string{}
	for app, err := range appErrs {
		appErr[app] = fmt.Sprintf("the instance records could not be read (%v); showing those of the last successful read", err)
	}
	now := time.Now()
	v := View{At: now, PollMS: now.Sub(start).Milliseconds(), SpanS: int(Span / time.Second), Channels: make([]Channel, 0, len(rules))}
	d.mu.Lock()
	for _, r := range rules {
		ch := Aggregate(now, r, samples)
		for i := range ch.Apps {
			ch.Apps[i].Error = appErr[ch.Apps[i].App]
		}
		ch.Events = append(ch.Events, d.events[r.Channel]...)
		v.Channels = append(v.Channels, ch)
	}
	d.mu.Unlock()
	slices.SortFunc(v.Channels, func(a, b Channel) int {
		if a.Releasing != b.Releasing {
			if a.Releasing {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Channel, b.Channel)
	})
	if d.cfg.Channel != "" && len(rules) == 0 {
		v.Error = fmt.Sprintf("channel %q has no rule: open a release with `switchyard channel open %s --apps a,b`", d.cfg.Channel, d.cfg.Channel)
	}
	old := d.cur.Swap(&published{view: v, next: make(chan struct{})})
	close(old.next)
}
