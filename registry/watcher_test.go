package registry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/connectivity"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

func put(t testing.TB, e interface {
	Put(ctx context.Context, key, val string) error
}, key, val string) {
	t.Helper()
	if err := e.Put(context.Background(), key, val); err != nil {
		t.Fatal(err)
	}
}

// kv adapts a client to put.
type kv struct {
	put func(ctx context.Context, key, val string) error
}

func (k kv) Put(ctx context.Context, key, val string) error { return k.put(ctx, key, val) }

func record(t testing.TB, app, id, addr string) string {
	t.Helper()
	b, err := registry.Marshal(registry.Record{App: app, ID: id, Addr: addr, Weight: 100, TrafficWeight: 100})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// skippedMetric reads switchyard.registry.records.skipped of app from reader.
func skippedMetric(t testing.TB, reader *sdkmetric.ManualReader, app string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "switchyard.registry.records.skipped" {
				continue
			}
			var n int64
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				if a, _ := dp.Attributes.Value("app"); a.AsString() == app {
					n += dp.Value
				}
			}
			return n
		}
	}
	return 0
}

func TestMalformedRecordsAreSkippedCountedAndLastGoodKept(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	k := kv{func(ctx context.Context, key, val string) error { _, err := cli.Put(ctx, key, val); return err }}
	const p = "/switchyard/services/order/"
	put(t, k, p+"a", record(t, "order", "a", "127.0.0.1:1001"))
	put(t, k, p+"b", record(t, "order", "b", "127.0.0.1:1002"))

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	rec := watch(t, cli, "order", func(c *registry.WatcherConfig) { c.MeterProvider = mp })
	rec.waitFor(t, "a and b", hasIDs("a", "b"))

	// a is overwritten with garbage: its last good version stays. c is garbage from the start,
	// d names another app, e sits on a nested key: all skipped. f is good and arrives.
	put(t, k, p+"a", `{"v":1,"id":"a","app":"order","addr":"no port"}`)
	put(t, k, p+"c", `{{{`)
	put(t, k, p+"d", record(t, "inventory", "d", "127.0.0.1:1004"))
	put(t, k, p+"e/x", record(t, "order", "e", "127.0.0.1:1005"))
	put(t, k, p+"f", record(t, "order", "f", "127.0.0.1:1006"))
	got := rec.waitFor(t, "a, b, f", hasIDs("a", "b", "f"))
	if got[0].Addr != "127.0.0.1:1001" {
		t.Fatalf("a lost its last good version: %+v", got[0])
	}
	if n := rec.w.Skipped(); n != 4 {
		t.Fatalf("Skipped() = %d, want 4", n)
	}
	if n := skippedMetric(t, reader, "order"); n != 4 {
		t.Fatalf("metric switchyard.registry.records.skipped = %d, want 4", n)
	}
	for _, u := range rec.all() {
		if u.Err != nil || len(u.Instances) == 0 {
			t.Fatalf("an update emptied the set or failed: %+v", u)
		}
	}

	// A fresh watcher lists the same keys: a has no last good version there, so only b and f.
	fresh := watch(t, cli, "order")
	fresh.waitFor(t, "b and f", hasIDs("b", "f"))
	if n := fresh.w.Skipped(); n != 4 {
		t.Fatalf("fresh watcher Skipped() = %d, want 4 (a, c, d, e/x)", n)
	}

	// Repairing a brings it back.
	put(t, k, p+"a", record(t, "order", "a", "127.0.0.1:2001"))
	got = rec.waitFor(t, "a repaired", func(in []registry.Record) bool {
		return len(in) == 3 && in[0].Addr == "127.0.0.1:2001"
	})
	_ = got
}

func TestCompactionDuringAWatchGapIsRecovered(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	viaProxy, direct := e.Client(t), e.DirectClient(t)
	k := kv{func(ctx context.Context, key, val string) error { _, err := direct.Put(ctx, key, val); return err }}
	const p = "/switchyard/services/order/"
	put(t, k, p+"a", record(t, "order", "a", "127.0.0.1:1001"))
	put(t, k, p+"b", record(t, "order", "b", "127.0.0.1:1002"))
	rec := watch(t, viaProxy, "order")
	rec.waitFor(t, "a and b", hasIDs("a", "b"))

	// The watcher's connection is cut; meanwhile a leaves, c joins, and history is compacted
	// past the watcher's revision, so resuming the watch is impossible.
	e.Cut()
	if _, err := direct.Delete(context.Background(), p+"a"); err != nil {
		t.Fatal(err)
	}
	put(t, k, p+"c", record(t, "order", "c", "127.0.0.1:1003"))
	for i := 0; i < 5; i++ {
		put(t, k, "/unrelated", "churn")
	}
	if _, err := e.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The cut has reached the watcher's client, which keeps the last good set meanwhile.
	testutil.Eventually(t, "the watcher's etcd connection to break", func() bool {
		return viaProxy.ActiveConnection().GetState() != connectivity.Ready
	})
	if got := ids(rec.w.Last().Instances); len(got) != 2 || got[0] != "a" {
		t.Fatalf("while cut off the watcher changed its set to %v; it must keep the last good one", got)
	}
	e.Heal()
	rec.waitFor(t, "b and c after re-listing", hasIDs("b", "c"))
	// The watcher went from a, b straight to b, c, with nothing in between: no update while
	// it was cut off, none that emptied the set or failed, and no half-applied history.
	for _, u := range rec.all() {
		if u.Err != nil || !(hasIDs("a", "b")(u.Instances) || hasIDs("b", "c")(u.Instances)) {
			t.Fatalf("update during the gap: %+v; want only {a b} then {b c}", u)
		}
	}
}

func TestWatcherReportsAnErrorWhenEtcdWasNeverReachable(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	rec := watch(t, cli, "order", func(c *registry.WatcherConfig) { c.RequestTimeout = 200 * time.Millisecond })
	testutil.Eventually(t, "an error update while etcd is down", func() bool { return rec.w.Last().Err != nil })
	if err := rec.w.Last().Err; !errors.Is(err, registry.ErrEtcdUnavailable) {
		t.Fatalf("error update = %v, want ErrEtcdUnavailable", err)
	}
	// Once etcd is back, the watcher recovers by itself.
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "an empty set once etcd is back", hasIDs())
}

func TestNewWatcherRefusesBadConfig(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	noop := func(registry.Snapshot) {}
	for name, cfg := range map[string]registry.WatcherConfig{
		"nil client":  {App: "order", OnUpdate: noop},
		"no OnUpdate": {Client: cli, App: "order"},
		"bad app":     {Client: cli, App: "or/der", OnUpdate: noop},
		"bad prefix":  {Client: cli, App: "order", OnUpdate: noop, Prefix: "x"},
	} {
		if _, err := registry.NewWatcher(cfg); err == nil {
			t.Errorf("%s: NewWatcher accepted it", name)
		}
	}
}
