package registry_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/registry"
)

// putRecord writes in under its instance key below prefix and returns the key's create
// revision.
func putRecord(t *testing.T, cli *clientv3.Client, prefix string, in registry.Record) int64 {
	t.Helper()
	val, err := registry.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(context.Background(), deploy.InstanceKey(prefix, in.App, in.ID), string(val))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func TestListReturnsTheAppsRecordsByIDAndNamesTheMalformedOnes(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	rec := func(app, id string) registry.Record {
		return registry.Record{App: app, ID: id, Addr: "10.0.0.1:9000", Color: deploy.Green, Weight: 50,
			TrafficWeight: 100, StartTime: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Metadata: map[string]string{"zone": "a"}}
	}
	revB := putRecord(t, cli, deploy.DefaultPrefix, rec("order", "order-b"))
	revA := putRecord(t, cli, deploy.DefaultPrefix, rec("order", "order-a"))
	putRecord(t, cli, deploy.DefaultPrefix, rec("orders", "orders-1")) // another app, sharing the name's start
	putRecord(t, cli, "/other", rec("order", "elsewhere"))             // another prefix
	for key, val := range map[string]string{
		"/switchyard/services/order/broken":      "{",
		"/switchyard/services/order/order-c":     `{"v":1,"id":"order-z","app":"order","addr":"10.0.0.1:9000"}`, // stored under another id
		"/switchyard/services/order/nested/deep": `{}`,
	} {
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}

	recs, skipped, err := registry.List(ctx, cli, "", "order")
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(recs); !slices.Equal(got, []string{"order-a", "order-b"}) {
		t.Fatalf("List returned %v, want order-a and order-b, by ID", got)
	}
	want := rec("order", "order-a")
	want.Epoch = revA
	if !recs[0].Equal(want) || recs[1].Epoch != revB {
		t.Fatalf("List returned %+v and epoch %d, want %+v and epoch %d", recs[0], recs[1].Epoch, want, revB)
	}
	var keys []string
	for _, s := range skipped {
		keys = append(keys, s.Key)
		if !errors.Is(s.Err, registry.ErrMalformedRecord) {
			t.Errorf("skipped %s: %v, want an ErrMalformedRecord", s.Key, s.Err)
		}
	}
	wantKeys := []string{"/switchyard/services/order/broken", "/switchyard/services/order/nested/deep", "/switchyard/services/order/order-c"}
	if !slices.Equal(keys, wantKeys) {
		t.Fatalf("List skipped %v, want %v", keys, wantKeys)
	}
	if msg := skipped[2].Err.Error(); !strings.Contains(msg, `record says app "order" id "order-z"`) {
		t.Fatalf("the skip of a record under another id says %q, want it to name the record's id", msg)
	}

	recs, skipped, err = registry.List(ctx, cli, "/other", "order")
	if err != nil || !slices.Equal(ids(recs), []string{"elsewhere"}) || len(skipped) != 0 {
		t.Fatalf("List under /other: %v %v %v, want elsewhere alone", ids(recs), skipped, err)
	}
	recs, skipped, err = registry.List(ctx, cli, "", "stock")
	if err != nil || len(recs) != 0 || len(skipped) != 0 {
		t.Fatalf("List of an app with no instance: %v %v %v, want nothing and no error", recs, skipped, err)
	}
}

func TestListRefusesBadArguments(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	for _, tc := range []struct{ prefix, app, want string }{
		{"", "", "registry: List: deploy: invalid app name"},
		{"", "a/b", "registry: List: deploy: invalid app name"},
		{"switchyard", "order", "must start with '/'"},
		{"/switchyard/", "order", "must start with '/'"},
	} {
		if _, _, err := registry.List(context.Background(), cli, tc.prefix, tc.app); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("List(%q, %q) = %v, want %q", tc.prefix, tc.app, err, tc.want)
		}
	}
	if _, _, err := registry.List(context.Background(), nil, "", "order"); err == nil || !strings.Contains(err.Error(), "etcd client is nil") {
		t.Errorf("List with a nil client = %v", err)
	}
}

func TestListWhileEtcdIsDownIsErrEtcdUnavailable(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	putRecord(t, cli, deploy.DefaultPrefix, registry.Record{App: "order", ID: "order-1", Addr: "10.0.0.1:9000"})
	e.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	recs, _, err := registry.List(ctx, cli, "", "order")
	if !errors.Is(err, registry.ErrEtcdUnavailable) || !errors.Is(err, context.DeadlineExceeded) || recs != nil {
		t.Fatalf("List while etcd is down: %v %v, want ErrEtcdUnavailable (and context.DeadlineExceeded)", recs, err)
	}
	if !strings.HasPrefix(err.Error(), "registry: list the instances of order: etcd unavailable") {
		t.Fatalf("List while etcd is down says %q", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, _, err := registry.List(ctx, cli, "", "order"); err != context.Canceled {
		t.Fatalf("List canceled while etcd is down: %v, want context.Canceled", err)
	}

	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	recs, _, err = registry.List(context.Background(), cli, "", "order")
	if err != nil || !slices.Equal(ids(recs), []string{"order-1"}) {
		t.Fatalf("List once etcd is back: %v %v", ids(recs), err)
	}
}
