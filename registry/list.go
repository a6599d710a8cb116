package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

// SkippedRecord is a key under an app's prefix that List could not read as an instance.
type SkippedRecord struct {
	// Key is the etcd key, e.g. "/switchyard/services/order/order-1".
	Key string
	// Err says what is wrong with it; it wraps ErrMalformedRecord.
	Err error
}

// List returns the instances of app registered under prefix (deploy.DefaultPrefix when
// empty), as one etcd read: the records sorted by ID, each with its Epoch (the key's create
// revision, as a Watcher sets it), and the keys under the app's prefix whose value is not a
// valid instance record (fix or delete them; a Watcher skips them too), in key order. Check
// both: a malformed record is never dropped silently.
//
// The read lasts until ctx's deadline, or DefaultRequestTimeout (5 s) if ctx has none. If
// etcd does not answer by then, or has no leader, the error wraps ErrEtcdUnavailable (and,
// for a deadline, context.DeadlineExceeded too); if ctx is canceled, it is ctx.Err(). List
// reads once and does not watch: a Watcher follows an app.
func List(ctx context.Context, cli *clientv3.Client, prefix, app string) ([]Record, []SkippedRecord, error) {
	if cli == nil {
		return nil, nil, errors.New("registry: List: the etcd client is nil; pass a connected *clientv3.Client")
	}
	if prefix == "" {
		prefix = deploy.DefaultPrefix
	}
	if err := validatePrefix(prefix); err != nil {
		return nil, nil, err
	}
	if err := deploy.ValidateName("app", app); err != nil {
		return nil, nil, fmt.Errorf("registry: List: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultRequestTimeout)
		defer cancel()
	}
	appPrefix := deploy.AppPrefix(prefix, app)
	resp, err := cli.Get(ctx, appPrefix, clientv3.WithPrefix())
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, nil, ctx.Err()
		}
		// Only the read was waited for: a deadline that passed means etcd did not answer.
		return nil, nil, fmt.Errorf("registry: list the instances of %s: %w", app, kvwatch.Err(context.WithoutCancel(ctx), err))
	}
	var recs []Record
	var skipped []SkippedRecord
	for _, kv := range resp.Kvs {
		in, err := unmarshalAt(app, strings.TrimPrefix(string(kv.Key), appPrefix), kv.Value)
		if err != nil {
			skipped = append(skipped, SkippedRecord{Key: string(kv.Key), Err: err})
			continue
		}
		in.Epoch = kv.CreateRevision
		recs = append(recs, in)
	}
	slices.SortFunc(recs, func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
	return recs, skipped, nil
}
