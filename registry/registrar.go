package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/dispatch"
)

// A Registrar keeps one instance registered in etcd under a lease.
//
// Locking: op (a one-slot semaphore, so that waiting for it respects a ctx) serializes every
// etcd write of the record and of the lease (Register, Update, Deregister, the background
// re-registration, Close); it is held across etcd requests, each bounded by RequestTimeout,
// and never while calling user code (Update's func runs before it is taken). mu guards the
// fields below it and is never held across I/O or a callback; a state change is made and
// pushed to the OnStateChange queue (which never blocks) under mu, so the changes are
// delivered in the order they were made and the last one delivered is State().
type Registrar struct {
	cfg    Config
	key    string
	ttlSec int64
	log    *slog.Logger
	notify *dispatch.Queue[StateChange] // nil without Config.OnStateChange

	op chan struct{} // holds a token while an operation writes to etcd
	// attempt is how long the next attempt of an etcd request may take (request); guarded
	// by op.
	attempt time.Duration

	mu      sync.Mutex
	inst    Record                    // the record to write (latest Update)
	ver     uint64                    // bumped at every change of inst or want
	lease   clientv3.LeaseID          // 0: none granted, or known to be gone
	granted map[clientv3.LeaseID]bool // every lease this Registrar was granted: a record on one is ours
	rev     int64                     // etcd revision of our latest write of the key (put or delete)
	err     error                     // why etcd differs from what is wanted; nil when it matches
	suspect bool                      // the lease's keepalive stopped: it may have expired
	dirty   bool                      // etcd may differ from what we want; the keeper retries
	want    bool                      // registered (Register) or not (Deregister)
	state   State
	closed  bool
	keeper  context.CancelFunc // nil until the first lease
	kick    chan struct{}      // wakes the keeper when lease or dirty changed
	synced  chan struct{}      // wakes watchOwnKey after a successful sync
	done    chan struct{}      // closed when the keeper exits
}

// NewRegistrar checks cfg and returns a Registrar that has not registered anything yet.
func NewRegistrar(cfg Config) (*Registrar, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	inst := cfg.Instance.withDefaults()
	if err := inst.Validate(); err != nil {
		return nil, err
	}
	r := &Registrar{
		cfg:    cfg,
		key:    deploy.InstanceKey(cfg.Prefix, inst.App, inst.ID),
		ttlSec: int64((cfg.TTL + time.Second - 1) / time.Second),
		log:    cfg.Logger.With("app", inst.App, "instance", inst.ID),
		inst:   inst,
		op:     make(chan struct{}, 1),
		kick:   make(chan struct{}, 1),
		synced: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	r.attempt = r.shortestAttempt()
	if cfg.OnStateChange != nil {
		r.notify = dispatch.Start(cfg.OnStateChange, func(p any) {
			r.log.Error("registry: OnStateChange panicked", "panic", p)
		})
	}
	return r, nil
}

// Key is the etcd key the instance is registered under.
func (r *Registrar) Key() string { return r.key }

// Record returns the record as it is (or will be) registered.
func (r *Registrar) Record() Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inst
}

// State returns the current state.
func (r *Registrar) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Err returns the error that keeps etcd from matching what the Registrar wants (e.g. a
// *DuplicateIDError while another live instance holds the id, or ErrEtcdUnavailable), or
// nil when it matches.
func (r *Registrar) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Register waits for the readiness checks, then RegisterDelay, then writes the record under
// a lease and keeps the lease alive in the background until Deregister or Close. If the lease
// is lost later (etcd unreachable for longer than the TTL), the Registrar re-registers by
// itself once etcd is back. Register on a registered instance is a no-op; after Deregister it
// registers again (checks and delay included). A Register that fails leaves the Registrar as
// it was: unregistered, or, if its registration was lost, still re-registering by itself.
//
// Registering is create-only: the record is written only if the key is absent or holds this
// Registrar's own lease. If another live instance holds the id, Register returns a
// *DuplicateIDError (errors.Is ErrDuplicateID) and writes nothing. The record of a process
// that died without Close lasts until its lease expires (up to the TTL), so a restart with
// the same id within the TTL gets this error too; retry after the TTL.
func (r *Registrar) Register(ctx context.Context) error {
	r.mu.Lock()
	closed, registered := r.closed, r.want && r.state == StateRegistered
	r.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if registered {
		return nil
	}
	if err := r.waitReady(ctx); err != nil {
		return err
	}
	if r.cfg.RegisterDelay > 0 {
		t := time.NewTimer(r.cfg.RegisterDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}

	if err := r.lockOp(ctx); err != nil {
		return fmt.Errorf("registry: register %s: %w", r.key, err)
	}
	defer r.unlockOp()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	wanted, keeping := r.want, r.keeper != nil
	r.want = true
	r.ver++
	if r.inst.StartTime.IsZero() {
		r.inst.StartTime = time.Now().UTC().Truncate(time.Millisecond)
	}
	r.mu.Unlock()
	if !keeping {
		// The keeper, which keeps etcd's connection from idling in gRPC's backoff while it
		// is down, is not running yet: do it for this first registration.
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); r.reconnect(rctx) }()
		defer func() { stop(); <-done }()
	}
	if err := r.syncLocked(ctx); err != nil {
		// As it was before: a lost registration stays wanted (the keeper re-registers
		// it), any other stays unregistered.
		r.mu.Lock()
		if r.want != wanted {
			r.want = wanted
			r.ver++
		}
		r.mu.Unlock()
		return fmt.Errorf("registry: register %s: %w", r.key, err)
	}
	r.startKeeper()
	return nil
}

// waitReady runs the checks in rounds until one round passes, CheckTimeout runs out (a
// *ReadinessError) or ctx ends (ctx.Err()).
func (r *Registrar) waitReady(ctx context.Context) error {
	if len(r.cfg.Checks) == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CheckTimeout)
	defer cancel()
	t := time.NewTimer(0)
	defer t.Stop()
	var failed string
	var lastErr error
	for {
		select {
		case <-cctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if lastErr == nil {
				lastErr = cctx.Err()
			}
			return &ReadinessError{Check: failed, Timeout: r.cfg.CheckTimeout, Err: lastErr}
		case <-t.C:
		}
		failed, lastErr = "", nil
		for _, c := range r.cfg.Checks {
			if err := c.Func(cctx); err != nil {
				failed, lastErr = c.Name, err
				break
			}
		}
		if lastErr == nil {
			return nil
		}
		r.log.Debug("registry: readiness check failed; retrying", "check", failed, "err", lastErr)
		t.Reset(r.cfg.CheckInterval)
	}
}

// Update applies fn to a copy of the record and re-puts it under the same lease (e.g. a new
// traffic_weight). fn must not change ID, App or Addr. It runs outside the Registrar's locks
// (it may call the Registrar), and runs again on the new record if another Update changed
// the record meanwhile, so it should only set fields. If the instance is not registered,
// the new record is kept for the next registration. If etcd cannot be reached (or ctx ends
// first), Update returns the error, keeps the new record, and the Registrar writes it by
// itself once etcd is back.
func (r *Registrar) Update(ctx context.Context, fn func(*Record)) error {
	var want bool
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return ErrClosed
		}
		cur, ver := r.inst, r.ver
		r.mu.Unlock()

		next := cur.withDefaults() // clones Metadata, so fn cannot touch the stored map
		fn(&next)
		if next.ID != cur.ID || next.App != cur.App || next.Addr != cur.Addr {
			return errors.New("registry: Update may not change id, app or addr; register a new instance for that")
		}
		next = next.withDefaults()
		if err := next.Validate(); err != nil {
			return err
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return ErrClosed
		}
		if r.ver != ver { // the record changed meanwhile: apply fn to the new one
			r.mu.Unlock()
			continue
		}
		r.inst, r.ver, want = next, ver+1, r.want
		r.mu.Unlock()
		break
	}
	if !want {
		return nil
	}
	if err := r.lockOp(ctx); err != nil {
		r.mu.Lock()
		r.dirty = true // the keeper writes it
		r.mu.Unlock()
		r.wake()
		return fmt.Errorf("registry: update %s (kept; written in the background): %w", r.key, err)
	}
	defer r.unlockOp()
	if err := r.syncLocked(ctx); err != nil {
		return fmt.Errorf("registry: update %s (kept; retried in the background): %w", r.key, err)
	}
	return nil
}

// Deregister deletes the instance's key at once, so consumers stop picking it, and keeps the
// lease and record so that Register can register it again. The delete is made in attempts
// (the first 500 ms long, see the package doc), so right after an etcd leader change it
// returns once the new leader takes it, not after RequestTimeout. If etcd cannot be reached
// within RequestTimeout (or ctx ends first) it returns the error and keeps trying in the
// background: State stays as it was (registered, or lost) until the key is deleted, then
// becomes StateUnregistered; Err says why it has not been yet.
func (r *Registrar) Deregister(ctx context.Context) error {
	if err := r.lockOp(ctx); err != nil {
		r.mu.Lock()
		if !r.closed {
			r.want, r.dirty = false, true // the keeper deletes it
			r.ver++
		}
		r.mu.Unlock()
		r.wake()
		return fmt.Errorf("registry: deregister %s (retried in the background): %w", r.key, err)
	}
	defer r.unlockOp()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	r.want = false
	r.ver++
	r.mu.Unlock()
	if err := r.syncLocked(ctx); err != nil {
		return fmt.Errorf("registry: deregister %s (retried in the background): %w", r.key, err)
	}
	return nil
}

// Close stops the keepalive and revokes the lease, which deletes the key if it is still
// there. A Registrar cannot be used after Close. It is safe to call more than once.
func (r *Registrar) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	stop := r.keeper
	r.mu.Unlock()
	if stop != nil {
		stop()
		<-r.done
	}

	var err error
	if lerr := r.lockOp(ctx); lerr != nil {
		err = fmt.Errorf("registry: close %s: gave up waiting for a write in progress (%w); its lease expires by itself within %v", r.key, lerr, r.cfg.TTL)
	} else {
		r.mu.Lock()
		lease := r.lease
		r.lease = 0
		r.mu.Unlock()
		if lease != 0 {
			err = r.request(ctx, func(actx context.Context) error {
				_, err := r.cfg.Client.Revoke(actx, lease)
				return err
			})
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("registry: revoke lease of %s (it expires by itself within %v): %w", r.key, r.cfg.TTL, err)
			}
		}
		r.unlockOp()
	}
	r.mu.Lock()
	tr := r.setStateLocked(StateClosed, err)
	r.mu.Unlock()
	r.logTransition(tr)
	if r.notify != nil {
		r.notify.Close()
	}
	return err
}

// lockOp takes the operation lock, or returns ctx.Err() if ctx ends first.
func (r *Registrar) lockOp(ctx context.Context) error {
	select {
	case r.op <- struct{}{}:
		return nil
	default:
	}
	select {
	case r.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Registrar) unlockOp() { <-r.op }
