package registry

import (
	"context"
	"errors"
	"fmt"

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

// leaseAlive asks etcd whether lease still lives (one whose keepalive stopped may be gone).
func (r *Registrar) leaseAlive(ctx context.Context, lease clientv3.LeaseID) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, r.cfg.RequestTimeout)
	resp, err := r.cfg.Client.TimeToLive(rctx, lease)
	cancel()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false, nil
	}
	if err != nil {
		return false, etcdErr(ctx, err)
	}
	return resp.TTL > 0, nil
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
