package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// storedRecord reads the instance record under key straight from etcd (ok false: no key).
func storedRecord(t testing.TB, cli *clientv3.Client, key string) (in registry.Record, lease clientv3.LeaseID, ok bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return registry.Record{}, 0, false
	}
	in, err = registry.Unmarshal(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return in, clientv3.LeaseID(resp.Kvs[0].Lease), true
}

// Issue 12 case 6: two providers with the same id overwrote each other's record silently.
func TestASecondInstanceWithTheSameIDIsRefused(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	first := register(t, cli, "order", "o-1", "127.0.0.1:9001")
	second, err := registry.NewRegistrar(registry.Config{Client: cli, TTL: testTTL, // RequestTimeout: the default 5 s, not to time out on a loaded machine
		Instance: registry.Record{App: "order", ID: "o-1", Addr: "127.0.0.1:9002"}, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = second.Close(context.Background()) })
	err = second.Register(context.Background())
	if !errors.Is(err, registry.ErrDuplicateID) || !strings.Contains(err.Error(), "is already registered by a live instance") {
		t.Fatalf("second Register of id o-1 = %v; want ErrDuplicateID saying the id is taken", err)
	}
	var dup *registry.DuplicateIDError
	if !errors.As(err, &dup) || dup.ID != "o-1" || dup.Lease == 0 {
		t.Fatalf("error %v does not name the id and the holder's lease", err)
	}
	t.Logf("error: %v", err)
	if in, _, ok := storedRecord(t, cli, first.Key()); !ok || in.Addr != "127.0.0.1:9001" {
		t.Fatalf("record after the refused Register: %+v (present %v); want the first instance's", in, ok)
	}
	if second.State() != registry.StateUnregistered || first.State() != registry.StateRegistered {
		t.Fatalf("states first %v second %v; want registered and unregistered", first.State(), second.State())
	}
	// The refused one never deletes the other's record, not even when told to deregister.
	if err := second.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := storedRecord(t, cli, first.Key()); !ok {
		t.Fatal("Deregister of the refused duplicate deleted the first instance's record")
	}
	// Once the first one is gone, the id is free.
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := second.Register(context.Background()); err != nil {
		t.Fatalf("Register once the id is free: %v", err)
	}
}

// A registrar whose record is deleted by someone else does not stay "registered" silently:
// it reports the loss and puts its record back.
func TestARecordDeletedBySomeoneElseIsPutBack(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli, direct := e.Client(t), e.DirectClient(t)
	l := &stateLog{}
	r := register(t, cli, "order", "o-1", "127.0.0.1:9001", func(c *registry.Config) { c.OnStateChange = l.add })
	if _, err := direct.Delete(context.Background(), r.Key()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the registrar to report the deleted record and put it back", func() bool {
		_, _, ok := storedRecord(t, direct, r.Key())
		return ok && l.saw(registry.StateRegistered, registry.StateLost, registry.StateRegistered)
	})
}

// A registrar that lost its lease in a partition does not overwrite, when it heals, the
// record another live instance registered under the same id meanwhile.
func TestReregistrationDoesNotOverwriteAnotherLiveInstance(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	kaCli, _ := keepAliveClient(t, e)
	direct := e.DirectClient(t)
	l := &stateLog{}
	first := register(t, kaCli, "order", "o-1", "127.0.0.1:9001", shortTTL, func(c *registry.Config) { c.OnStateChange = l.add })
	e.Cut()
	testutil.Eventually(t, "the first instance's lease to expire", func() bool {
		_, _, ok := storedRecord(t, direct, first.Key())
		return !ok && l.saw(registry.StateRegistered, registry.StateLost)
	})
	second := register(t, direct, "order", "o-1", "127.0.0.1:9002")
	_, lease2, _ := storedRecord(t, direct, second.Key())
	e.Heal()
	testutil.Eventually(t, "the first registrar to find the id taken", func() bool {
		return errors.Is(first.Err(), registry.ErrDuplicateID)
	})
	if in, lease, ok := storedRecord(t, direct, first.Key()); !ok || in.Addr != "127.0.0.1:9002" || lease != lease2 {
		t.Fatalf("record %+v on lease %x (present %v); want the second instance's, on lease %x", in, lease, ok, lease2)
	}
	if first.State() != registry.StateLost {
		t.Fatalf("first registrar state %v; want lost", first.State())
	}
	// When the second goes, the first takes its id back by itself.
	if err := second.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the first instance to register again", func() bool {
		in, _, ok := storedRecord(t, direct, first.Key())
		return ok && in.Addr == "127.0.0.1:9001" && first.State() == registry.StateRegistered && first.Err() == nil
	})
}
