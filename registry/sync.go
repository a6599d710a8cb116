package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

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

// write makes etcd hold what is given: inst under a live lease (want), or no record of ours.
// lease is the lease last used (0: none), suspect whether its keepalive stopped.
func (r *Registrar) write(ctx context.Context, want bool, inst Record, lease clientv3.LeaseID, suspect bool) error {
	if want {
		return r.put(ctx, inst, lease, suspect)
	}
	return r.remove(ctx, lease, suspect)
}

// remove deletes the record if it is still ours (on lease).
func (r *Registrar) remove(ctx context.Context, lease clientv3.LeaseID, suspect bool) error {
	if lease != 0 && suspect {
		// Keep a lease etcd kept, so Register can use it again (the keeper renews it once
		// it is no longer suspect); forget one that is gone, which took the key with it.
		alive, err := r.leaseAlive(ctx, lease)
		if err != nil {
			return err
		}
		r.mu.Lock()
		if r.lease == lease {
			r.suspect = false
			if !alive {
				r.lease = 0
			}
		}
		r.mu.Unlock()
		if !alive {
			return nil
		}
	}
	if lease == 0 {
		return nil // never written, or its lease is gone and took the key with it
	}
	// Delete only our own record: the key may hold another instance's by now. The delete
	// is idempotent, so an attempt etcd dropped can be made again.
	return r.request(ctx, func(actx context.Context) error {
		resp, err := r.cfg.Client.Txn(actx).
			If(clientv3.Compare(clientv3.LeaseValue(r.key), "=", lease)).
			Then(clientv3.OpDelete(r.key)).Commit()
		if err == nil {
			r.wrote(resp.Header.Revision)
		}
		return err
	})
}

// put writes inst under lease, or under a new lease if there is none or it is gone.
func (r *Registrar) put(ctx context.Context, inst Record, lease clientv3.LeaseID, suspect bool) error {
	val, err := Marshal(inst)
	if err != nil {
		return err
	}
	if lease != 0 && suspect {
		// The keepalive stopped. If etcd kept the lease (it does not expire leases while it
		// has no leader), keep using it; otherwise grant a new one below.
		alive, err := r.leaseAlive(ctx, lease)
		if err != nil {
			return err
		}
		if !alive {
			lease = 0
		}
	}
	for attempt := 0; ; attempt++ {
		if lease == 0 {
			// A Grant etcd applied but did not answer in time leaves a lease with no key on
			// it, which expires after the TTL.
			err := r.request(ctx, func(actx context.Context) error {
				g, err := r.cfg.Client.Grant(actx, r.ttlSec)
				if err == nil {
					lease = g.ID
				}
				return err
			})
			if err != nil {
				return err
			}
		}
		r.mu.Lock()
		r.lease, r.suspect = lease, false
		if r.granted == nil {
			r.granted = map[clientv3.LeaseID]bool{}
		}
		r.granted[lease] = true
		r.mu.Unlock()
		err = r.request(ctx, func(actx context.Context) error { return r.createOrReplace(actx, lease, string(val)) })
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
			lease = 0 // expired between TimeToLive and Put: grant a fresh one
			continue
		}
		return err
	}
}

// leaseAlive asks etcd whether lease still lives (one whose keepalive stopped may be gone).
func (r *Registrar) leaseAlive(ctx context.Context, lease clientv3.LeaseID) (bool, error) {
	var ttl int64
	err := r.request(ctx, func(actx context.Context) error {
		resp, err := r.cfg.Client.TimeToLive(actx, lease)
		if err == nil {
			ttl = resp.TTL
		}
		return err
	})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return ttl > 0, nil
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

// firstAttempt is how long the first attempt of an etcd request may take (RequestTimeout, if
// that is shorter). A request that etcd accepted and then dropped (a member forwarded it to a
// leader that had just died) is never answered: without attempts it would wait out the whole
// RequestTimeout although a new leader is elected within about a second.
const firstAttempt = 500 * time.Millisecond

// attemptGap is the least time between the starts of two attempts, so that a request etcd
// refuses at once (no leader yet) is not repeated in a busy loop.
const attemptGap = 50 * time.Millisecond

// request makes one etcd request in attempts, within RequestTimeout in all (or until ctx
// ends): each attempt may take r.attempt; one that etcd does not answer (ErrEtcdUnavailable:
// no answer in its time, no leader, the connection broke) is made again at once, and one that
// ran out its time makes r.attempt twice as long, up to RequestTimeout, so that a slow but
// working etcd still gets attempts as long as it needs (the keeper's next re-sync starts
// where this one stopped). An answer, whatever it says, sets r.attempt back to firstAttempt.
// do must be idempotent: an attempt that timed out may have been applied. The error is
// etcdErr's. It needs the operation lock held, which guards r.attempt.
func (r *Registrar) request(ctx context.Context, do func(ctx context.Context) error) error {
	all, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	defer cancel()
	var gap *time.Timer
	defer func() {
		if gap != nil {
			gap.Stop()
		}
	}()
	for {
		began := time.Now()
		actx, acancel := context.WithTimeout(all, r.attempt)
		err := etcdErr(ctx, do(actx))
		ranOut := all.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded)
		acancel()
		if !errors.Is(err, ErrEtcdUnavailable) {
			if ctx.Err() == nil {
				r.attempt = r.shortestAttempt() // etcd answered
			}
			return err
		}
		if all.Err() != nil {
			return err
		}
		if ranOut {
			r.attempt = min(2*r.attempt, r.cfg.RequestTimeout)
		}
		if wait := attemptGap - time.Since(began); wait > 0 {
			if gap == nil {
				gap = time.NewTimer(wait)
			} else {
				gap.Reset(wait)
			}
			select {
			case <-all.Done():
				return err
			case <-gap.C:
			}
		}
		r.log.Debug("registry: etcd did not answer an attempt; trying again", "err", err, "next_attempt", r.attempt)
	}
}

// shortestAttempt is how long the first attempt of a request may take.
func (r *Registrar) shortestAttempt() time.Duration { return min(firstAttempt, r.cfg.RequestTimeout) }

// etcdErr turns "etcd did not answer" into ErrEtcdUnavailable, keeps the caller's
// cancellation as ctx.Err(), and passes other errors through. etcd's own refusals of the
// Unavailable class (no leader, leader changed, "request timed out, possibly due to previous
// leader failure"), which its client hands over as an rpctypes.EtcdError rather than a gRPC
// status, count as not answered too: the request may be taken once a leader is elected.
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
