// Package kvwatch follows every key under one etcd prefix and keeps a decoded, sorted copy,
// the way switchyard reads all of its etcd state (instances, rules).
//
// It lists the prefix, then watches from the list's revision + 1, so no change is lost in
// between. When the watch fails (etcd restarted, leader lost, history compacted while it was
// away) it lists again, with backoff, and carries on; until then it keeps the last good set,
// so an outage never empties it. A value that does not decode is skipped and reported, and the
// last good value of that key stays. Config.Stamp gives items their key's create revision and
// lease; Republish has OnChange called again from the Watcher's goroutine.
package kvwatch

import (
	"cmp"
	"context"
	"errors"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"log/slog"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/backoff"
)

// ErrUnavailable is wrapped when etcd did not answer: a timeout, a broken connection, no
// leader (gRPC Unavailable).
var ErrUnavailable = errors.New("switchyard: etcd unavailable")

// Config configures a Watcher.
type Config[T any] struct {
	// Client is the etcd client. Required; not closed by the Watcher.
	Client *clientv3.Client
	// Prefix is followed, e.g. "/switchyard/services/order/". Required.
	Prefix string
	// Decode turns one key (without Prefix) and value into an item. An error skips the value
	// and keeps the key's last good item. Required.
	Decode func(name string, value []byte) (T, error)
	// Stamp, if set, is given every decoded item with its key's create revision (it changes
	// when the key is deleted and created again) and lease (0: none), and returns the item
	// to keep. Optional. It is called right after the Decode of the same value, on the
	// Watcher's goroutine, so Decode may leave it what it needs (registry's Watcher does).
	Stamp func(item T, createRevision, lease int64) T
	// Equal tells an unchanged item from a changed one. Required.
	Equal func(a, b T) bool
	// OnChange receives the whole set after every change, in key order, from the Watcher's
	// goroutine; the slice is the callee's. Required.
	OnChange func(items []T, revision int64)
	// PerEvent calls OnChange after each changed key rather than once per watch response
	// (which may batch several revisions), so that no intermediate state is skipped while
	// the watch lasts. After a re-list only the net change can be known.
	PerEvent bool
	// Coalesce, when PerEvent is false, makes the responses that arrive together one
	// OnChange: after a response that changed the set, the Watcher takes every response
	// already waiting in etcd's watch channel, and then keeps taking those that follow the
	// previous one within Coalesce, for at most 10 × Coalesce from the first, before it calls
	// OnChange. So a lone change waits Coalesce more, and a burst (every instance re-putting
	// after a shift) is one OnChange. 0: only the responses already waiting are taken
	// together.
	Coalesce time.Duration
	// OnListError is told of a failed list while the Watcher has never listed. Optional.
	OnListError func(err error)
	// OnSkip is told of every skipped value. Optional.
	OnSkip func(key string, err error)
	// RequestTimeout caps each list request. Required.
	RequestTimeout time.Duration
	// Logger receives restarts and failures. Required.
	Logger *slog.Logger
}

// Watcher follows one prefix. Its goroutine owns all its state.
type Watcher[T any] struct {
	cfg    Config[T]
	nudge  chan struct{}
	again  chan struct{} // Republish
	cancel context.CancelFunc
	done   chan struct{}

	set    []entry[T] // sorted by name
	hasSet bool
	rev    int64 // of the last OnChange
}

type entry[T any] struct {
	name string
	v    T
}

// New starts following cfg.Prefix.
func New[T any](cfg Config[T]) *Watcher[T] {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher[T]{cfg: cfg, nudge: make(chan struct{}, 1), again: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

// Close stops the Watcher and waits for its goroutine: no callback runs after Close returns.
func (w *Watcher[T]) Close() {
	w.cancel()
	<-w.done
}

// Refresh makes a Watcher that waits to retry after a failure retry now.
func (w *Watcher[T]) Refresh() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

// Republish makes the Watcher call OnChange again with its current set (once it has one),
// from its goroutine, e.g. because the caller's view of the set depends on time. Safe to
// call from any goroutine, also after Close (it then does nothing).
func (w *Watcher[T]) Republish() {
	select {
	case w.again <- struct{}{}:
	default:
	}
}

func (w *Watcher[T]) republish() {
	if w.hasSet {
		w.publish(w.rev)
	}
}

func (w *Watcher[T]) run(ctx context.Context) {
	defer close(w.done)
	bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
	for {
		rev, err := w.list(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !w.hasSet && w.cfg.OnListError != nil {
				w.cfg.OnListError(err)
			}
			w.cfg.Logger.Warn("listing failed; keeping the last good set and retrying", "prefix", w.cfg.Prefix, "err", err)
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
		w.cfg.Logger.Info("watch ended; listing again", "prefix", w.cfg.Prefix, "err", err, "from_revision", rev+1)
		if time.Since(started) > 10*time.Second {
			bo.Reset() // a watch that lasted is no reason to wait long
		}
		if !w.wait(ctx, bo.Next()) {
			return
		}
	}
}

// wait sleeps d, or less if nudged; false if ctx ended.
func (w *Watcher[T]) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		case <-w.nudge:
		case <-w.again:
			w.republish()
			continue
		}
		return true
	}
}

// list reads the whole prefix and replaces the set, keeping the last good value of keys
// whose value no longer decodes. It returns the revision of the read.
func (w *Watcher[T]) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	resp, err := w.cfg.Client.Get(lctx, w.cfg.Prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return 0, Err(ctx, err)
	}
	next := make([]entry[T], 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		name := w.name(kv.Key)
		if v, ok := w.decode(kv); ok {
			if i, had := w.find(name); had && w.cfg.Equal(w.set[i].v, v) {
				v = w.set[i].v // an unchanged item stays the same value
			}
			next = append(next, entry[T]{name, v})
		} else if i, had := w.find(name); had {
			next = append(next, w.set[i])
		}
	}
	// etcd returns keys in byte order, so this is a check that costs one pass.
	slices.SortFunc(next, func(a, b entry[T]) int { return cmp.Compare(a.name, b.name) })
	changed := !w.hasSet || !slices.EqualFunc(next, w.set, func(a, b entry[T]) bool {
		return a.name == b.name && w.cfg.Equal(a.v, b.v)
	})
	w.set, w.hasSet = next, true
	if changed {
		w.publish(resp.Header.Revision)
	}
	return resp.Header.Revision, nil
}

// watch applies events from rev on until the watch ends, and says why it ended.
func (w *Watcher[T]) watch(ctx context.Context, rev int64) error {
	// Require a leader, so a partitioned member ends the watch instead of going silent.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := w.cfg.Client.Watch(wctx, w.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		var resp clientv3.WatchResponse
		select {
		case <-w.again:
			w.republish()
			continue
		case r, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return errors.New("watch channel closed")
			}
			resp = r
		}
		if err := resp.Err(); err != nil {
			return err
		}
		changed := w.apply(resp)
		if !changed || w.cfg.PerEvent {
			continue
		}
		rev, err := w.coalesce(ctx, wch, resp.Header.Revision)
		w.publish(rev)
		if err != nil {
			return err
		}
	}
}

// apply applies the events of one watch response to the set and reports whether it changed
// (with PerEvent, publishing after each changed key).
func (w *Watcher[T]) apply(resp clientv3.WatchResponse) bool {
	changed := false
	for _, ev := range resp.Events {
		evChanged := false
		switch ev.Type {
		case mvccpb.PUT:
			if v, ok := w.decode(ev.Kv); ok {
				evChanged = w.put(w.name(ev.Kv.Key), v)
			}
		case mvccpb.DELETE:
			evChanged = w.remove(w.name(ev.Kv.Key))
		}
		if evChanged && w.cfg.PerEvent {
			w.publish(ev.Kv.ModRevision)
		}
		changed = changed || evChanged
	}
	return changed
}

// coalesce applies the responses that arrive together with one that changed the set at rev
// (Config.Coalesce) and returns the revision of the last one applied. An error (the watch
// failed or ended) comes with the revision of what was applied before it, to be published
// before the watch is listed again.
func (w *Watcher[T]) coalesce(ctx context.Context, wch clientv3.WatchChan, rev int64) (int64, error) {
	var gap, limit <-chan time.Time
	if w.cfg.Coalesce > 0 {
		lt := time.NewTimer(10 * w.cfg.Coalesce)
		defer lt.Stop()
		limit = lt.C
	}
	var gt *time.Timer
	defer func() {
		if gt != nil {
			gt.Stop()
		}
	}()
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-wch:
		default:
			// Nothing waiting: wait for the next within the gap, if there is one.
			if w.cfg.Coalesce <= 0 {
				return rev, nil
			}
			if gt == nil {
				gt = time.NewTimer(w.cfg.Coalesce)
			} else {
				gt.Reset(w.cfg.Coalesce)
			}
			gap = gt.C
			select {
			case resp, ok = <-wch:
			case <-gap:
				return rev, nil
			case <-limit:
				return rev, nil
			case <-ctx.Done():
				return rev, ctx.Err()
			}
		}
		if !ok {
			if ctx.Err() != nil {
				return rev, ctx.Err()
			}
			return rev, errors.New("watch channel closed")
		}
		if err := resp.Err(); err != nil {
			return rev, err
		}
		w.apply(resp)
		rev = resp.Header.Revision
		select {
		case <-limit:
			return rev, nil
		default:
		}
	}
}

// name is key without Prefix, in a string of its own (the item may keep it).
func (w *Watcher[T]) name(key []byte) string {
	if p := w.cfg.Prefix; len(key) >= len(p) && string(key[:len(p)]) == p {
		return string(key[len(p):])
	}
	return string(key)
}

func (w *Watcher[T]) decode(kv *mvccpb.KeyValue) (T, bool) {
	v, err := w.cfg.Decode(w.name(kv.Key), kv.Value)
	if err != nil {
		if w.cfg.OnSkip != nil {
			w.cfg.OnSkip(string(kv.Key), err)
		}
		return v, false
	}
	if w.cfg.Stamp != nil {
		v = w.cfg.Stamp(v, kv.CreateRevision, kv.Lease)
	}
	return v, true
}

func (w *Watcher[T]) find(name string) (int, bool) {
	return slices.BinarySearchFunc(w.set, name, func(e entry[T], name string) int { return cmp.Compare(e.name, name) })
}

// put adds or replaces an item and reports whether the set changed.
func (w *Watcher[T]) put(name string, v T) bool {
	i, found := w.find(name)
	if !found {
		w.set = slices.Insert(w.set, i, entry[T]{name, v})
		return true
	}
	if w.cfg.Equal(w.set[i].v, v) {
		return false
	}
	w.set[i].v = v
	return true
}

// remove deletes an item and reports whether the set changed.
func (w *Watcher[T]) remove(name string) bool {
	i, found := w.find(name)
	if found {
		w.set = slices.Delete(w.set, i, i+1)
	}
	return found
}

func (w *Watcher[T]) publish(rev int64) {
	w.rev = rev
	items := make([]T, len(w.set))
	for i, e := range w.set {
		items[i] = e.v
	}
	w.cfg.OnChange(items, rev)
}

// Err turns "etcd did not answer" (Unanswered) into ErrUnavailable, keeps the caller's
// cancellation as ctx.Err(), and passes other errors through.
func Err(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case Unanswered(err):
		return &unavailableError{err}
	}
	return err
}

// Unanswered reports whether err says etcd did not answer the request, so that it may be sent
// again: a deadline or cancellation, a broken connection (gRPC Unavailable), or a member that
// has no leader or lost it meanwhile, which etcd reports as its own error type with the code
// Unavailable ("etcdserver: leader changed", "no leader", "request timed out, possibly due to
// previous leader failure").
func Unanswered(err error) bool {
	var ee rpctypes.EtcdError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		status.Code(err) == codes.Unavailable || (errors.As(err, &ee) && ee.Code() == codes.Unavailable)
}

type unavailableError struct{ err error }

func (e *unavailableError) Error() string {
	return "etcd unavailable; check that etcd is running and reachable at the client's endpoints: " + e.err.Error()
}

func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.err} }
