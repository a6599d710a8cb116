package job

import (
	"context"
	"encoding/json"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/backoff"
	"github.com/switchyard-go/switchyard/internal/record"
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

// register makes the executor's sessions, the session proper (TTL Config.TTL) and the claims
// session (claimTTL), and registers the executor on the first. On an error it revokes what it
// made, as far as etcd answers, and says what failed.
func (e *Executor) register(ctx context.Context) (sess, claims *session, err error) {
	if sess, err = e.grant(ctx, e.cfg.TTL); err != nil {
		return nil, nil, e.failed(ctx, "grant the session lease", err)
	}
	if claims, err = e.grant(ctx, claimTTL*time.Second); err != nil {
		_ = e.revoke(ctx, sess)
		return nil, nil, e.failed(ctx, "grant the claims lease", err)
	}
	if err = e.putRecord(ctx, sess); err != nil {
		_ = e.revoke(ctx, sess)
		_ = e.revoke(ctx, claims)
		return nil, nil, e.failed(ctx, "register executor", err)
	}
	return sess, claims, nil
}

// putRecord writes the executor's record, executors/<id>, on sess's lease.
func (e *Executor) putRecord(ctx context.Context, sess *session) error {
	val, _ := json.Marshal(executorRecord{Header: record.Header{V: schemaVersion}, ID: e.cfg.ID, Color: string(e.color)})
	rctx, cancel := e.request(ctx)
	defer cancel()
	_, err := e.cfg.Client.Put(rctx, e.keys.exec, string(val), clientv3.WithLease(sess.id))
	return err
}

// keep campaigns with the current session and, when etcd was unreachable for longer than
// the TTL and the session ended, makes a new one (with backoff) and registers again.
func (e *Executor) keep(ctx context.Context) {
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		e.mu.Lock()
		sess := e.sess
		e.mu.Unlock()
		select {
		case <-sess.done:
			if err := e.renew(ctx); err != nil {
				if ctx.Err() == nil {
					e.log.Warn("job: cannot renew the session yet", "err", err)
				}
				sleep(ctx, bo.Next())
				continue
			}
			e.log.Info("job: session renewed; registered again")
			bo.Reset()
			continue
		default:
		}
		if err := e.campaign(ctx, sess); err != nil && ctx.Err() == nil {
			e.log.Warn("job: campaign failed; trying again", "err", err)
			sleep(ctx, bo.Next())
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// renew replaces a lost session (and a lost claims session) and re-registers.
func (e *Executor) renew(ctx context.Context) error {
	e.mu.Lock()
	claims := e.claims
	e.mu.Unlock()
	select {
	case <-claims.done:
		c, err := e.grant(ctx, claimTTL*time.Second)
		if err != nil {
			return e.failed(ctx, "grant the claims lease", err)
		}
		e.mu.Lock()
		e.claims = c
		e.mu.Unlock()
	default:
	}
	sess, err := e.grant(ctx, e.cfg.TTL)
	if err != nil {
		return e.failed(ctx, "grant the session lease", err)
	}
	if err := e.putRecord(ctx, sess); err != nil {
		sess.orphan() // its lease expires with the TTL
		return e.failed(ctx, "register executor", err)
	}
	e.mu.Lock()
	e.sess = sess
	e.mu.Unlock()
	return nil
}
