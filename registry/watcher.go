package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/switchyard-go/switchyard/internal/backoff"
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
	// Logger receives skipped records (Warn) and watch restarts (Info/Debug). Default
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
// Locking: mu guards last. The watch loop owns everything else.
type Watcher struct {
	cfg     WatcherConfig
	prefix  string // the app's key prefix, ending in '/'
	log     *slog.Logger
	skipped metric.Int64Counter
	attrs   metric.AddOption
	nSkip   atomic.Uint64
	nudge   chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}

	// owned by the watch loop
	set    []Instance // sorted by ID: the last good version of each instance
	hasSet bool

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
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{
		cfg:     cfg,
		prefix:  AppPrefix(cfg.Prefix, cfg.App),
		log:     cfg.Logger.With("app", cfg.App),
		skipped: skipped,
		attrs:   metric.WithAttributeSet(attribute.NewSet(attribute.String("app", cfg.App))),
		nudge:   make(chan struct{}, 1),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go w.run(ctx)
	return w, nil
}

// Close stops the Watcher and waits for its goroutine. OnUpdate is not called after Close
// returns. It is safe to call more than once.
func (w *Watcher) Close() {
	w.cancel()
	<-w.done
}

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
func (w *Watcher) Refresh() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
	for {
		rev, err := w.list(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !w.hasSet {
				w.emit(Update{Err: err})
			}
			w.log.Warn("registry: listing instances failed; keeping the last good set and retrying", "err", err)
			if !w.wait(ctx, bo.Next()) {
				return
			}
			continue
		}
		started := time.Now()
		err = w.watch(ctx, rev+1)
		if ctx.Err() != nil {
			return
		}
		w.log.Info("registry: watch ended; listing again", "err", err, "from_revision", rev+1)
		if time.Since(started) > 10*time.Second {
			bo.Reset()
		}
		if !w.wait(ctx, bo.Next()) {
			return
		}
	}
}

// wait sleeps d, or less if nudged; false if ctx ended.
func (w *Watcher) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-w.nudge:
	}
	return true
}

// list reads the whole set and replaces the current one, keeping the last good version of
// instances whose record is now malformed. It returns the revision of the read.
func (w *Watcher) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	resp, err := w.cfg.Client.Get(lctx, w.prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return 0, etcdErr(ctx, err)
	}
	next := make([]Instance, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		id, in, ok := w.decode(kv)
		switch {
		case ok:
			next = append(next, in)
		case id != "":
			if i, had := w.find(id); had {
				next = append(next, w.set[i])
			}
		}
	}
	// etcd returns keys in byte order, which is ID order here; sorting is a check that
	// costs one pass.
	slices.SortFunc(next, func(a, b Instance) int { return cmp.Compare(a.ID, b.ID) })
	changed := !w.hasSet || !slices.EqualFunc(next, w.set, Instance.Equal)
	w.set, w.hasSet = next, true
	if changed {
		w.publish(resp.Header.Revision)
	}
	return resp.Header.Revision, nil
}

// watch applies watch events from rev on until the watch ends, and says why it ended.
func (w *Watcher) watch(ctx context.Context, rev int64) error {
	// Require a leader, so a partitioned member ends the watch instead of going silent.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range w.cfg.Client.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			return err
		}
		changed := false
		for _, ev := range resp.Events {
			switch ev.Type {
			case mvccpb.PUT:
				if _, in, ok := w.decode(ev.Kv); ok {
					changed = w.put(in) || changed
				}
			case mvccpb.DELETE:
				if id, ok := w.idOf(ev.Kv.Key); ok {
					changed = w.remove(id) || changed
				}
			}
		}
		if changed {
			w.publish(resp.Header.Revision)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("registry: watch channel closed")
}

func (w *Watcher) find(id string) (int, bool) {
	return slices.BinarySearchFunc(w.set, id, func(in Instance, id string) int { return cmp.Compare(in.ID, id) })
}

// put adds or replaces in, and reports whether the set changed.
func (w *Watcher) put(in Instance) bool {
	i, found := w.find(in.ID)
	if !found {
		w.set = slices.Insert(w.set, i, in)
		return true
	}
	if w.set[i].Equal(in) {
		return false
	}
	w.set[i] = in
	return true
}

// remove deletes id, and reports whether the set changed.
func (w *Watcher) remove(id string) bool {
	i, found := w.find(id)
	if found {
		w.set = slices.Delete(w.set, i, i+1)
	}
	return found
}

func (w *Watcher) idOf(key []byte) (string, bool) {
	id, ok := strings.CutPrefix(string(key), w.prefix)
	if !ok || ValidateName("id", id) != nil {
		return "", false
	}
	return id, true
}

// decode returns the instance stored in kv. ok is false for a malformed record, which is
// counted and logged; id is then still set when the key itself names an instance.
func (w *Watcher) decode(kv *mvccpb.KeyValue) (id string, in Instance, ok bool) {
	id, idOK := w.idOf(kv.Key)
	if !idOK {
		w.skip(kv.Key, errors.New("key does not name an instance: want <prefix>/services/<app>/<id>"))
		return "", Instance{}, false
	}
	in, err := Unmarshal(kv.Value)
	if err == nil && (in.App != w.cfg.App || in.ID != id) {
		err = malformed(fmt.Errorf("record says app %q id %q but is stored under app %q id %q",
			in.App, in.ID, w.cfg.App, id))
	}
	if err != nil {
		w.skip(kv.Key, err)
		return id, Instance{}, false
	}
	return id, in, true
}

func (w *Watcher) skip(key []byte, err error) {
	w.nSkip.Add(1)
	w.skipped.Add(context.Background(), 1, w.attrs)
	w.log.Warn("registry: skipping malformed instance record; keeping the last good version", "key", string(key), "err", err)
}

// publish gives OnUpdate a copy of the current set: the watch loop keeps changing its own.
func (w *Watcher) publish(rev int64) {
	w.emit(Update{Instances: slices.Clone(w.set), Revision: rev})
}

func (w *Watcher) emit(u Update) {
	w.mu.Lock()
	w.last = u
	w.mu.Unlock()
	w.cfg.OnUpdate(u)
}
