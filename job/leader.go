package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
	"github.com/switchyard-go/switchyard/internal/record"
)

// watchExecutors follows the executors' records, the membership the leader assigns over,
// and wakes the leader at each change.
func (e *Executor) watchExecutors() *kvwatch.Watcher[executorRecord] {
	return kvwatch.New(kvwatch.Config[executorRecord]{
		Client: e.cfg.Client, Prefix: e.keys.executors, Decode: decodeExecutor,
		Equal: func(a, b executorRecord) bool { return a == b },
		OnChange: func(ex []executorRecord, _ int64) {
			e.mu.Lock()
			e.execs = ex
			e.mu.Unlock()
			e.kickLeader()
		},
		OnSkip:         func(key string, err error) { e.log.Warn("job: ignoring an executor record", "key", key, "err", err) },
		RequestTimeout: e.cfg.RequestTimeout, Logger: e.log,
	})
}

// kickLeader wakes the leader's loop, if this executor leads, to check the assignment.
func (e *Executor) kickLeader() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// campaign runs for leadership with sess for as long as the executor runs and sess lives;
// as leader, it keeps the assignment right. It returns nil when ctx ends or sess is lost,
// and the error of a failed election request otherwise.
func (e *Executor) campaign(ctx context.Context, sess *session) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // a lost session ends the campaign too
		select {
		case <-sess.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	key, rev, err := e.elect(ctx, sess)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	e.log.Info("job: leading")
	t := time.NewTicker(e.recheck)
	defer t.Stop()
	e.mu.Lock()
	// What is in etcd as far as we know, then what we wrote, and the revision of that.
	written, writtenRv := e.assign, e.assignRv
	e.mu.Unlock()
	for {
		_, drainsChanged := e.drains() // before reassigning, so no change is missed
		e.reassign(ctx, key, rev, &written, &writtenRv)
		select {
		case <-ctx.Done():
			return nil
		case <-sess.done:
			e.log.Warn("job: session lost; no longer leading")
			return nil
		case <-drainsChanged: // a drain changed who may run
		case <-e.kick:
		case <-t.C:
		}
	}
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

// reassign writes the assignment the current executors and drains call for, if it differs
// from the one last written (cur, at revision curRv) or if what etcd holds since is not a
// leader's (deleted, or refused by decodeAssignment), provided that the election key key
// still has create revision rev: this executor still leads.
func (e *Executor) reassign(ctx context.Context, key string, rev int64, cur *assignment, curRv *int64) {
	e.mu.Lock()
	execs := slices.Clone(e.execs)
	seen, seenRv, bad := e.assign, e.assignRv, e.assignBad
	e.mu.Unlock()
	if seen.Version > cur.Version { // another leader wrote since
		*cur, *curRv = seen, seenRv
	}
	// Someone else's write since ours: a deletion, or a value refused (the last good one is
	// then kept, so seen may still look like ours). Executors' claims check the revision of
	// the key, so until a leader writes again nothing runs.
	foreign := bad || (seenRv > *curRv && !sameItems(seen.Items, cur.Items))
	next, eligible := e.plan(execs, cur.Version+1)
	if !foreign && sameItems(next.Items, cur.Items) {
		return
	}
	val, _ := json.Marshal(next)
	wctx, cancel := e.request(ctx)
	defer cancel()
	resp, err := e.cfg.Client.Txn(wctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
		Then(clientv3.OpPut(e.keys.assignment, string(val))).Commit()
	if err != nil || !resp.Succeeded {
		if ctx.Err() == nil {
			if err != nil {
				err = e.failed(ctx, "write the assignment", err)
			}
			e.log.Warn("job: assignment not written (leadership lost or etcd unreachable)", "err", err)
		}
		return
	}
	*cur, *curRv = next, resp.Header.Revision
	if foreign {
		e.log.Warn("job: the assignment in etcd was not a leader's; wrote it again", "version", next.Version)
	}
	e.log.Info("job: assigned", "version", next.Version, "executors", eligible)
}

// plan is the assignment of the given version that execs and the drains now call for: items
// 0..Items-1 round-robin over the executors whose color is not drained, in the order of their
// ids (also returned).
func (e *Executor) plan(execs []executorRecord, version int64) (next assignment, eligible []string) {
	for _, x := range execs {
		if !e.drained(deploy.Color(x.Color)) {
			eligible = append(eligible, x.ID)
		}
	}
	slices.Sort(eligible)
	next = assignment{Header: record.Header{V: schemaVersion}, Version: version, Items: map[string][]int{}}
	for it := 0; it < e.cfg.Job.Items && len(eligible) > 0; it++ {
		id := eligible[it%len(eligible)]
		next.Items[id] = append(next.Items[id], it)
	}
	return next, eligible
}

// sameItems reports whether two assignments give the same items to the same executors
// (nil and empty are the same).
func sameItems(a, b map[string][]int) bool {
	return (len(a) == 0 && len(b) == 0) || reflect.DeepEqual(a, b)
}
