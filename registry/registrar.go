package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"google.golang.org/grpc/connectivity"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/backoff"
	"github.com/switchyard-go/switchyard/internal/dispatch"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// Defaults of Config.
const (
	DefaultTTL            = 10 * time.Second
	DefaultCheckInterval  = 500 * time.Millisecond
	DefaultCheckTimeout   = time.Minute
	DefaultRequestTimeout = 5 * time.Second
)

// Check is a readiness check: Register does not register the instance until every check
// returns nil in the same round (DESIGN.md "Lifecycle of an instance").
type Check struct {
	// Name identifies the check in errors and logs, e.g. "db".
	Name string
	// Func reports whether the instance is ready as far as this check goes. It is called
	// with a ctx that ends when Register gives up; it should return promptly.
	Func func(ctx context.Context) error
}

// Config configures a Registrar.
type Config struct {
	// Client is the etcd client. Required. The Registrar does not close it.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// Instance is the record to register. ID, App and Addr are required. A zero Weight
	// registers deploy.DefaultWeight (100); a zero StartTime registers the time of Register; with
	// an empty Channel, TrafficWeight is always deploy.DefaultWeight.
	Instance Record
	// TTL is the lease TTL, rounded up to whole seconds. If the instance dies, consumers
	// stop seeing it after at most TTL. Default DefaultTTL (10 s).
	TTL time.Duration
	// RegisterDelay is waited after the readiness checks pass and before registering,
	// e.g. to let caches fill. Default 0.
	RegisterDelay time.Duration
	// Checks are the readiness checks. Default none.
	Checks []Check
	// CheckInterval is the pause between rounds of failing readiness checks. Default
	// DefaultCheckInterval (500 ms).
	CheckInterval time.Duration
	// CheckTimeout caps how long Register waits for the readiness checks. Default
	// DefaultCheckTimeout (1 min).
	CheckTimeout time.Duration
	// RequestTimeout caps each etcd request. Default DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// OnStateChange, if set, is told of every state change, in order, from one goroutine.
	// It may block without holding up the Registrar, but should not for long; a panic in it
	// is recovered and logged.
	OnStateChange func(StateChange)
	// Logger receives state changes (Info/Warn) and retry details (Debug). Default
	// slog.Default().
	Logger *slog.Logger
}

// State is where a Registrar stands.
type State int

// The states. A Registrar starts Unregistered, becomes Registered after Register, goes Lost
// while its lease is gone or etcd is unreachable (it re-registers by itself), returns to
// Unregistered after Deregister, and ends Closed.
const (
	StateUnregistered State = iota
	StateRegistered
	StateLost
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateUnregistered:
		return "unregistered"
	case StateRegistered:
		return "registered"
	case StateLost:
		return "lost"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StateChange is one transition, with the error that caused it, if any.
type StateChange struct {
	From, To State
	Err      error
}

// Errors a caller can branch on.
var (
	// ErrClosed is returned by calls on a closed Registrar.
	ErrClosed = errors.New("registry: registrar is closed")
	// ErrNotReady is wrapped by the *ReadinessError Register returns when a readiness check
	// did not pass in time.
	ErrNotReady = errors.New("registry: instance not ready")
	// ErrEtcdUnavailable is wrapped when etcd did not answer within RequestTimeout, the
	// connection broke, or etcd had no leader. It is the same error value in every
	// switchyard package.
	ErrEtcdUnavailable = kvwatch.ErrUnavailable
	// ErrDuplicateID is wrapped by the *DuplicateIDError returned when the instance's key
	// holds the record of another live instance (another lease).
	ErrDuplicateID = errors.New("registry: duplicate instance id")
	// errRecordDeleted is why a registration whose key someone else deleted is lost.
	errKeepaliveStopped = errors.New("registry: lease keepalive stopped: etcd did not answer within the TTL")
	errRecordDeleted    = errors.New("registry: the instance's record was deleted while registered (by an operator, by another instance with the same id that stopped, or with an expired lease); putting it back")
)

// DuplicateIDError says that the instance's key is taken: another instance registered the
// same app and id under its own lease (or someone wrote the key by hand). A Registrar never
// overwrites or deletes such a record; it registers once the key is free.
type DuplicateIDError struct {
	Key   string // the etcd key
	ID    string // the instance id
	Lease int64  // the lease the record is attached to; 0 for a record without a lease
}

func (e *DuplicateIDError) Error() string {
	if e.Lease == 0 {
		return fmt.Sprintf("registry: instance id %s is already taken by a record without a lease under %s (written by hand?); delete that key, or give this instance another ID", e.ID, e.Key)
	}
	return fmt.Sprintf("registry: instance id %s is already registered by a live instance (lease %x) under %s; give each instance a unique ID (Config.Instance.ID; e.g. host name plus port, or the pod name), or stop the other one", e.ID, e.Lease, e.Key)
}

// Unwrap makes errors.Is(err, ErrDuplicateID) true.
func (e *DuplicateIDError) Unwrap() error { return ErrDuplicateID }

// ReadinessError names the readiness check that kept an instance from registering.
type ReadinessError struct {
	Check   string
	Timeout time.Duration
	Err     error // the check's last error
}

func (e *ReadinessError) Error() string {
	return fmt.Sprintf("registry: readiness check %q did not pass within %v: %v; the instance was not registered",
		e.Check, e.Timeout, e.Err)
}

// Unwrap returns ErrNotReady and the check's own error.
func (e *ReadinessError) Unwrap() []error { return []error{ErrNotReady, e.Err} }

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
	if cfg.Client == nil {
		return nil, errors.New("registry: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if err := validatePrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("registry: Config.TTL %v is negative; use a positive TTL (default %v)", cfg.TTL, DefaultTTL)
	}
	if cfg.RegisterDelay < 0 {
		return nil, fmt.Errorf("registry: Config.RegisterDelay %v is negative", cfg.RegisterDelay)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	for i, c := range cfg.Checks {
		if c.Name == "" || c.Func == nil {
			return nil, fmt.Errorf("registry: Config.Checks[%d] needs both a Name and a Func", i)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
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
	if cfg.OnStateChange != nil {
		r.notify = dispatch.Start(cfg.OnStateChange, func(p any) {
			r.log.Error("registry: OnStateChange panicked", "panic", p)
		})
	}
	return r, nil
}

func validatePrefix(p string) error {
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return fmt.Errorf("registry: prefix %q must start with '/' and not end with one, e.g. %q", p, deploy.DefaultPrefix)
	}
	return nil
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
// lease and record so that Register can register it again. If etcd cannot be reached it
// returns the error and keeps trying in the background.
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
			rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
			_, err = r.cfg.Client.Revoke(rctx, lease)
			cancel()
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

// syncLocked makes etcd match what is wanted: the record under a live lease, or no key.
// It needs the operation lock held. On failure, or if what is wanted changed meanwhile, it
// marks the Registrar dirty so the keeper retries.
func (r *Registrar) syncLocked(ctx context.Context) error {
	want, ver, err := r.trySyncLocked(ctx)
	r.mu.Lock()
	// The keepalive of the lease just written stopped while writing: the lease may be gone.
	lost := err == nil && want && r.suspect
	r.dirty, r.err = err != nil || lost || r.ver != ver, err
	var tr *transition
	switch {
	case lost:
		r.err = errKeepaliveStopped
		tr = r.setStateLocked(StateLost, errKeepaliveStopped)
	case err == nil && want:
		tr = r.setStateLocked(StateRegistered, nil)
	case err == nil:
		tr = r.setStateLocked(StateUnregistered, nil)
	case want && r.state != StateUnregistered:
		tr = r.setStateLocked(StateLost, err)
	}
	// A failed Register of an unregistered instance stays unregistered: nothing was lost,
	// and Register reports the failure.
	r.mu.Unlock()
	r.logTransition(tr)
	r.wake()
	if err == nil {
		select {
		case r.synced <- struct{}{}:
		default:
		}
	}
	return err
}

// trySyncLocked writes what is wanted now and returns it (want, and the version of want and
// the record it wrote).
func (r *Registrar) trySyncLocked(ctx context.Context) (want bool, ver uint64, err error) {
	r.mu.Lock()
	want, ver = r.want, r.ver
	inst, lease, suspect := r.inst, r.lease, r.suspect
	r.mu.Unlock()
	return want, ver, r.write(ctx, want, inst, lease, suspect)
}

func (r *Registrar) write(ctx context.Context, want bool, inst Record, lease clientv3.LeaseID, suspect bool) error {
	if !want && lease != 0 && suspect {
		// Keep a lease etcd kept, so Register can use it again (the keeper renews it once
		// it is no longer suspect); forget one that is gone, which took the key with it.
		rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
		resp, err := r.cfg.Client.TimeToLive(rctx, lease)
		cancel()
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return etcdErr(ctx, err)
		}
		gone := err != nil || resp.TTL <= 0
		r.mu.Lock()
		if r.lease == lease {
			r.suspect = false
			if gone {
				r.lease = 0
			}
		}
		r.mu.Unlock()
		if gone {
			return nil
		}
	}
	if !want {
		if lease == 0 {
			return nil // never written, or its lease is gone and took the key with it
		}
		// Delete only our own record: the key may hold another instance's by now.
		rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
		defer cancel()
		resp, err := r.cfg.Client.Txn(rctx).
			If(clientv3.Compare(clientv3.LeaseValue(r.key), "=", lease)).
			Then(clientv3.OpDelete(r.key)).Commit()
		if err != nil {
			return etcdErr(ctx, err)
		}
		r.wrote(resp.Header.Revision)
		return nil
	}
	val, err := Marshal(inst)
	if err != nil {
		return err
	}
	if lease != 0 && suspect {
		// The keepalive stopped. If etcd kept the lease (it does not expire leases while it
		// has no leader), keep using it; otherwise grant a new one below.
		rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
		resp, err := r.cfg.Client.TimeToLive(rctx, lease)
		cancel()
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return etcdErr(ctx, err)
		}
		if err != nil || resp.TTL <= 0 {
			lease = 0
		}
	}
	for attempt := 0; ; attempt++ {
		if lease == 0 {
			rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
			g, err := r.cfg.Client.Grant(rctx, r.ttlSec)
			cancel()
			if err != nil {
				return etcdErr(ctx, err)
			}
			lease = g.ID
		}
		r.mu.Lock()
		r.lease, r.suspect = lease, false
		if r.granted == nil {
			r.granted = map[clientv3.LeaseID]bool{}
		}
		r.granted[lease] = true
		r.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
		err = r.createOrReplace(rctx, lease, string(val))
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			lease = 0 // expired between TimeToLive and Put: grant a fresh one
			continue
		}
		return etcdErr(ctx, err)
	}
}

// createOrReplace puts the record under lease if the key is absent or already ours (on
// lease), in one transaction, and returns a *DuplicateIDError if it holds another record.
func (r *Registrar) createOrReplace(ctx context.Context, lease clientv3.LeaseID, val string) error {
	put := clientv3.OpPut(r.key, val, clientv3.WithLease(lease))
	resp, err := r.cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)).
		Then(put).
		Else(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(r.key), "=", lease)},
			[]clientv3.Op{put},
			[]clientv3.Op{clientv3.OpGet(r.key)})).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		inner := resp.Responses[0].GetResponseTxn()
		if !inner.Succeeded {
			kvs := inner.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 { // deleted between the two compares: try again
				return fmt.Errorf("registry: %s changed while registering; retrying", r.key)
			}
			holder := clientv3.LeaseID(kvs[0].Lease)
			r.mu.Lock()
			ours := r.granted[holder]
			r.mu.Unlock()
			if !ours {
				return &DuplicateIDError{Key: r.key, ID: r.cfg.Instance.ID, Lease: kvs[0].Lease}
			}
			// Our own record on a lease we gave up on (its keepalive stopped, etcd said it
			// was gone or about to go): move it to the new lease.
			resp, err = r.cfg.Client.Txn(ctx).
				If(clientv3.Compare(clientv3.LeaseValue(r.key), "=", holder)).
				Then(put).Commit()
			if err != nil {
				return err
			}
			if !resp.Succeeded {
				return fmt.Errorf("registry: %s changed while registering; retrying", r.key)
			}
		}
	}
	r.wrote(resp.Header.Revision)
	return nil
}

// wrote records the revision of our latest write of the key, so the keeper's watch of the
// key can tell our own changes from someone else's.
func (r *Registrar) wrote(rev int64) {
	r.mu.Lock()
	r.rev = max(r.rev, rev)
	r.mu.Unlock()
}

// etcdErr turns "etcd did not answer" into ErrEtcdUnavailable, keeps the caller's
// cancellation as ctx.Err(), and passes other errors through.
func etcdErr(ctx context.Context, err error) error {
	err = kvwatch.Err(ctx, err)
	if errors.Is(err, ErrEtcdUnavailable) {
		return fmt.Errorf("registry: %w", err)
	}
	return err
}

func (r *Registrar) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// transition is a state change made under mu, logged once mu is released.
type transition struct {
	from, to State
	err      error
}

// setStateLocked changes the state and queues the change for OnStateChange, with mu held, so
// that changes are delivered in the order they are made (Push never blocks). Closed is
// final. It returns the change to log, or nil.
func (r *Registrar) setStateLocked(to State, err error) *transition {
	from := r.state
	if from == to || from == StateClosed {
		return nil
	}
	r.state = to
	if r.notify != nil {
		r.notify.Push(StateChange{From: from, To: to, Err: err})
	}
	return &transition{from: from, to: to, err: err}
}

func (r *Registrar) logTransition(t *transition) {
	switch {
	case t == nil:
	case t.to == StateLost:
		r.log.Warn("registry: registration lost; re-registering when etcd is back", "err", t.err)
	case t.err != nil:
		r.log.Warn("registry: state changed", "from", t.from, "to", t.to, "err", t.err)
	default:
		r.log.Info("registry: state changed", "from", t.from, "to", t.to)
	}
}

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
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: min(5*time.Second, r.cfg.TTL)}
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
			d := bo.Next()
			if errors.Is(lastErr, ErrEtcdUnavailable) {
				// etcd did not answer: the attempt waited for it (up to RequestTimeout) while
				// reconnect kept the connection trying, so try again at once after a long
				// attempt, and every reconnectEvery after quick ones.
				d = min(d, reconnectEvery) - time.Since(lastBegan)
			}
			d = max(d, time.Millisecond)
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
