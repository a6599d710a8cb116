package job

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// session is a lease kept alive until it is orphaned, revoked or lost (etcd did not answer
// for its TTL). It does what etcd's concurrency.Session does, without its waits on the
// client's context: that Session grants and revokes its lease, and its Election resigns, on
// the client's context unless told otherwise, so an executor stopping during an outage
// waited for etcd to come back. Here every request has a ctx capped by RequestTimeout.
type session struct {
	id     clientv3.LeaseID
	cancel context.CancelFunc // ends the keep-alives
	done   chan struct{}      // closed when the keep-alives ended
}

// grant makes a session with a lease of ttl (whole seconds, at least 1). Its keep-alives run
// until it is orphaned or revoked, whatever ctx does; ctx caps only the grant.
func (e *Executor) grant(ctx context.Context, ttl time.Duration) (*session, error) {
	rctx, cancel := e.request(ctx)
	resp, err := e.cfg.Client.Grant(rctx, int64(max(1, ttl/time.Second)))
	cancel()
	if err != nil {
		return nil, err
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := e.cfg.Client.KeepAlive(kctx, resp.ID)
	if err != nil {
		kcancel()
		return nil, err // the lease expires with its TTL
	}
	s := &session{id: resp.ID, cancel: kcancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer kcancel()
		for range ch { // until kctx ends or the lease is lost
		}
	}()
	return s, nil
}

// orphan ends the keep-alives; the lease expires with its TTL.
func (s *session) orphan() {
	s.cancel()
	<-s.done
}

// revoke ends the keep-alives and revokes the lease, so the keys on it go at once; if etcd
// does not answer by ctx's end or RequestTimeout, the lease expires with its TTL.
func (e *Executor) revoke(ctx context.Context, s *session) error {
	s.orphan()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	rctx, cancel := e.request(ctx)
	defer cancel()
	_, err := e.cfg.Client.Revoke(rctx, s.id)
	return err
}

// elect puts the executor's candidacy, <election>/<lease in hex> = its id, on the session's
// lease, and returns once it is the oldest candidacy: this executor leads for as long as
// that key lives with that create revision. The layout is etcd concurrency.Election's (and
// etcdctl elect's). Each request is capped by RequestTimeout; the wait for the candidacies
// before it to go is a watch, which ends with ctx.
func (e *Executor) elect(ctx context.Context, s *session) (key string, rev int64, err error) {
	key = fmt.Sprintf("%s/%x", e.keys.election, int64(s.id))
	rctx, cancel := e.request(ctx)
	resp, err := e.cfg.Client.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, e.cfg.ID, clientv3.WithLease(s.id))).
		Else(clientv3.OpGet(key)).Commit()
	cancel()
	if err != nil {
		return "", 0, e.failed(ctx, "campaign", err)
	}
	rev = resp.Header.Revision
	if !resp.Succeeded { // a candidacy of this session's from an earlier campaign
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return "", 0, fmt.Errorf("job: campaign: candidacy %s vanished; trying again", key)
		}
		rev = kvs[0].CreateRevision
	}
	for {
		rctx, cancel := e.request(ctx)
		older, err := e.cfg.Client.Get(rctx, e.keys.election+"/", append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(rev-1))...)
		cancel()
		if err != nil {
			return "", 0, e.failed(ctx, "campaign", err)
		}
		if len(older.Kvs) == 0 {
			return key, rev, nil
		}
		if err := waitDelete(ctx, e.cfg.Client, string(older.Kvs[0].Key), older.Header.Revision); err != nil {
			return "", 0, err
		}
	}
}

// waitDelete waits until key is deleted after revision rev, or ctx ends.
func waitDelete(ctx context.Context, cli *clientv3.Client, key string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("job: campaign: watching %s: %w", key, err)
		}
		for _, ev := range resp.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("job: campaign: the watch ended")
}
