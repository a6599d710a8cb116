package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// meterName is the instrumentation scope of this package's metrics.
const meterName = "github.com/switchyard-go/switchyard/registry"

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Client is the etcd client. Required. The Watcher does not close it.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default DefaultPrefix ("/switchyard").
	Prefix string
	// App is the app whose instances to follow. Required.
	App string
	// OnUpdate receives every change of the instance set, in order, from the Watcher's
	// goroutine. Required. It holds up the Watcher while it runs, so it should be quick.
	OnUpdate func(Update)
	// RequestTimeout caps each list request. Default DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// Logger receives skipped records (Warn) and watch restarts (Info). Default
	// slog.Default().
	Logger *slog.Logger
	// MeterProvider provides the counter switchyard.registry.records.skipped. Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
}

// Update is the complete instance set of one app after a change.
type Update struct {
	// Instances are every registered instance, sorted by ID. Never nil when Err is nil.
	Instances []Instance
	// Revision is the etcd revision the set reflects.
	Revision int64
	// Err is set, and Instances nil, only while the Watcher has never listed the app:
	// etcd could not be reached. Once it has a set, outages are ridden out silently with
	// the last good set.
	Err error
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
	kv      *kvwatch.Watcher[Instance]
	app     string
	log     *slog.Logger
	onUp    func(Update)
	skipped metric.Int64Counter
	attrs   metric.AddOption
	nSkip   atomic.Uint64

	mu   sync.Mutex
	last Update
}

// NewWatcher checks cfg and starts following the app. The first Update arrives once the
// first list succeeds (or, with Err set, once it fails). Close stops it.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("registry: WatcherConfig.Client is nil; pass a connected *clientv3.Client")
	}
	if cfg.OnUpdate == nil {
		return nil, errors.New("registry: WatcherConfig.OnUpdate is nil; it is how the Watcher reports the instance set")
	}
	if err := ValidateName("app", cfg.App); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
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
	w := &Watcher{
		app:     cfg.App,
		log:     cfg.Logger.With("app", cfg.App),
		onUp:    cfg.OnUpdate,
		skipped: skipped,
		attrs:   metric.WithAttributeSet(attribute.NewSet(attribute.String("app", cfg.App))),
	}
	w.kv = kvwatch.New(kvwatch.Config[Instance]{
		Client:         cfg.Client,
		Prefix:         AppPrefix(cfg.Prefix, cfg.App),
		Decode:         w.decode,
		Equal:          Instance.Equal,
		OnChange:       func(in []Instance, rev int64) { w.emit(Update{Instances: in, Revision: rev}) },
		OnListError:    func(err error) { w.emit(Update{Err: fmt.Errorf("registry: %w", err)}) },
		OnSkip:         w.skip,
		RequestTimeout: cfg.RequestTimeout,
		Logger:         w.log,
	})
	return w, nil
}

// Close stops the Watcher and waits for its goroutine. OnUpdate is not called after Close
// returns. It is safe to call more than once.
func (w *Watcher) Close() { w.kv.Close() }

// Last returns the last Update given to OnUpdate (zero before the first).
func (w *Watcher) Last() Update {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Skipped is how many records this Watcher has skipped as malformed.
func (w *Watcher) Skipped() uint64 { return w.nSkip.Load() }

// Refresh asks a Watcher that is waiting to retry after a failure to retry now. It does
// nothing to a healthy watch (etcd's watch already tells it everything).
func (w *Watcher) Refresh() { w.kv.Refresh() }

// decode reads the record stored under the instance key id.
func (w *Watcher) decode(id string, val []byte) (Instance, error) {
	if err := ValidateName("id", id); err != nil {
		return Instance{}, errors.New("key does not name an instance: want <prefix>/services/<app>/<id>")
	}
	in, err := Unmarshal(val)
	if err == nil && (in.App != w.app || in.ID != id) {
		err = malformed(fmt.Errorf("record says app %q id %q but is stored under app %q id %q", in.App, in.ID, w.app, id))
	}
	return in, err
}

func (w *Watcher) skip(key string, err error) {
	w.nSkip.Add(1)
	w.skipped.Add(context.Background(), 1, w.attrs)
	w.log.Warn("registry: skipping malformed instance record; keeping the last good version", "key", key, "err", err)
}

func (w *Watcher) emit(u Update) {
	w.mu.Lock()
	w.last = u
	w.mu.Unlock()
	w.onUp(u)
}
