package registry

import (
	"errors"
	"fmt"
	"time"

	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

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
	// errKeepaliveStopped is why a registration whose lease's keepalive stopped is lost.
	errKeepaliveStopped = errors.New("registry: lease keepalive stopped: etcd did not answer within the TTL")
	// errRecordDeleted is why a registration whose key someone else deleted is lost.
	errRecordDeleted = errors.New("registry: the instance's record was deleted while registered (by an operator, by another instance with the same id that stopped, or with an expired lease); putting it back")
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
