package registry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/switchyard-go/switchyard/internal/backoff"
)

// startKeeper starts the keeper (keep) once, after the first registration; Close stops it.
func (r *Registrar) startKeeper() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keeper != nil || r.closed { // closed: a Register that raced with Close
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.keeper = cancel
	go r.keep(ctx)
}

// keep runs in the background from the first Register until Close: it keeps the current
// lease alive, notices when the keepalive stops (etcd's client closes the channel once the
// TTL has passed without an answer), and re-syncs with backoff until etcd matches.
func (r *Registrar) keep(ctx context.Context) {
	defer close(r.done)
	var (
		kaLease  clientv3.LeaseID
		kaCh     <-chan *clientv3.LeaseKeepAliveResponse
		kaCancel context.CancelFunc = func() {}
		retry    *time.Timer
		retryC   <-chan time.Time
	)
	defer func() { kaCancel() }()
	watching := make(chan struct{})
	go func() { defer close(watching); r.watchOwnKey(ctx) }()
	defer func() { <-watching }()
	reconnecting := make(chan struct{})
	go func() { defer close(reconnecting); r.reconnect(ctx) }()
	defer func() { <-reconnecting }()
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: retryCap(r.cfg.TTL)}
	var (
		lastErr   error     // of the last re-sync
		lastBegan time.Time // when it began
	)
	for {
		r.mu.Lock()
		lease, dirty, suspect := r.lease, r.dirty, r.suspect
		r.mu.Unlock()
		if lease != kaLease || (kaCh == nil && lease != 0 && !suspect) {
			kaCancel()
			kaLease, kaCh = lease, nil
			if lease != 0 && !suspect {
				ch, cancel, err := r.keepAlive(ctx, lease)
				kaCancel = cancel
				if err != nil {
					r.leaseLost(lease, err)
					continue
				}
				kaCh = ch
			}
		}
		if dirty && retryC == nil {
			d := retryDelay(bo.Next(), lastErr, lastBegan)
			if retry == nil {
				retry = time.NewTimer(d)
			} else {
				retry.Reset(d)
			}
			retryC = retry.C
		}
		select {
		case <-ctx.Done():
			if retry != nil {
				retry.Stop()
			}
			return
		case <-r.kick:
		case _, ok := <-kaCh:
			if !ok {
				kaCh = nil
				r.leaseLost(lease, errKeepaliveStopped)
			}
		case <-retryC:
			retryC = nil
			if r.lockOp(ctx) != nil {
				return
			}
			lastBegan = time.Now()
			lastErr = r.syncLocked(ctx)
			r.unlockOp()
			if lastErr == nil {
				bo.Reset()
			} else {
				r.log.Debug("registry: re-sync failed; retrying", "err", lastErr)
			}
		}
	}
}

// retryCap is the longest the keeper waits between re-syncs: 5 s, and at most a third of the
// lease TTL, so that with the backoff's +20 % jitter a retry still comes well inside the
// lease (a wait of a whole TTL could sleep past a lease a new etcd leader had just kept).
func retryCap(ttl time.Duration) time.Duration { return min(5*time.Second, ttl/3) }

// retryDelay is how long the keeper waits before the next re-sync: the backoff's next
// delay, except after a re-sync that failed because etcd did not answer.
func retryDelay(next time.Duration, lastErr error, lastBegan time.Time) time.Duration {
	if errors.Is(lastErr, ErrEtcdUnavailable) {
		// The attempt waited for etcd (up to RequestTimeout) while reconnect kept the
		// connection trying, so try again at once after a long attempt, and every
		// reconnectEvery after quick ones.
		next = min(next, reconnectEvery) - time.Since(lastBegan)
	}
	return max(next, time.Millisecond)
}

// keyChanged looks at the changes of the key that the keeper's watch saw. A change newer
// than our latest write, while the instance is meant to be registered, is someone else's: a
// delete (an operator, a duplicate that stopped, or our lease expiring) or another lease's
// record. Either way the registration is lost and the keeper re-syncs: it puts the record
// back if the key is free, and otherwise reports the *DuplicateIDError without overwriting.
func (r *Registrar) keyChanged(evs []*clientv3.Event) {
	r.mu.Lock()
	var cause error
	for _, ev := range evs {
		if ev.Kv.ModRevision <= r.rev || !r.want {
			continue
		}
		switch {
		case ev.Type == clientv3.EventTypeDelete:
			cause = errRecordDeleted
		case !r.granted[clientv3.LeaseID(ev.Kv.Lease)]:
			cause = &DuplicateIDError{Key: r.key, ID: r.cfg.Instance.ID, Lease: ev.Kv.Lease}
		}
	}
	var tr *transition
	if cause != nil {
		r.dirty, r.err = true, cause
		tr = r.setStateLocked(StateLost, cause)
	}
	r.mu.Unlock()
	r.logTransition(tr)
}

// watchOwnKey runs beside the keeper until ctx ends: it watches the instance's key from
// our latest write on and hands the changes to keyChanged. When the watch ends (compacted,
// closed) it marks the Registrar dirty and starts again after the keeper's next successful
// sync, from that write. (clientv3's Watch may block while etcd is unreachable, so it does
// not run on the keeper's goroutine.)
func (r *Registrar) watchOwnKey(ctx context.Context) {
	for {
		r.mu.Lock()
		rev, dirty := r.rev, r.dirty
		r.mu.Unlock()
		if rev > 0 && !dirty {
			wctx, cancel := context.WithCancel(ctx)
			for resp := range r.cfg.Client.Watch(wctx, r.key, clientv3.WithRev(rev+1)) {
				if resp.Err() != nil {
					break
				}
				r.keyChanged(resp.Events)
			}
			cancel()
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.dirty = true
			r.mu.Unlock()
			r.wake()
		}
		select {
		case <-ctx.Done():
			return
		case <-r.synced:
		}
	}
}

// keepAlive starts etcd's keepalive of lease; cancel stops it.
func (r *Registrar) keepAlive(ctx context.Context, lease clientv3.LeaseID) (<-chan *clientv3.LeaseKeepAliveResponse, context.CancelFunc, error) {
	kctx, cancel := context.WithCancel(ctx)
	ch, err := r.cfg.Client.KeepAlive(kctx, lease)
	return ch, cancel, err
}

// leaseLost marks the lease suspect and the registration dirty, so the keeper re-syncs.
func (r *Registrar) leaseLost(lease clientv3.LeaseID, err error) {
	r.mu.Lock()
	if r.lease != lease { // a sync already moved to another lease
		r.mu.Unlock()
		return
	}
	r.suspect, r.dirty = true, true
	var tr *transition
	if r.want {
		tr = r.setStateLocked(StateLost, err)
	}
	r.mu.Unlock()
	r.logTransition(tr)
}

// reconnectEvery is how often, while etcd's connection is down (gRPC's TRANSIENT_FAILURE),
// reconnect resets the connection's reconnect backoff (±20 %).
const reconnectEvery = 300 * time.Millisecond

// reconnect runs beside the keeper (and beside a first Register) until ctx ends: while the
// etcd client's gRPC connection is down it resets the connection's reconnect backoff every
// reconnectEvery, so the client tries etcd again that often instead of waiting out gRPC's
// default backoff (1 s growing to 120 s), and the Registrar re-registers within about that
// much of etcd answering. While the connection is up it waits for a change and costs nothing.
func (r *Registrar) reconnect(ctx context.Context) {
	conn := r.cfg.Client.ActiveConnection()
	if conn == nil {
		return
	}
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	var next time.Time // no reset before this
	for {
		s := conn.GetState()
		if s != connectivity.TransientFailure {
			if !conn.WaitForStateChange(ctx, s) {
				return
			}
			continue
		}
		if wait := time.Until(next); wait > 0 {
			t.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			continue
		}
		conn.ResetConnectBackoff()
		next = time.Now().Add(time.Duration(float64(reconnectEvery) * (0.8 + 0.4*rand.Float64())))
	}
}
