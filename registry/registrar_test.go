package registry_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/registry"
)

func TestRegisterAndDiscover(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rec := watch(t, cli, "order")
	rec.waitFor(t, 5*time.Second, "the first, empty set", hasIDs())

	r := register(t, cli, "order", "o-1", "127.0.0.1:9001", func(c *registry.Config) {
		c.Instance.Warmup = 30 * time.Second
		c.Instance.Metadata = map[string]string{"zone": "a"}
	})
	got := rec.waitFor(t, 5*time.Second, "o-1", hasIDs("o-1"))[0]
	if got.Addr != "127.0.0.1:9001" || got.Color != registry.ColorBlue || got.Version != "v1" ||
		got.Weight != 100 || got.TrafficWeight != 100 || got.Warmup != 30*time.Second || got.Metadata["zone"] != "a" {
		t.Fatalf("discovered record differs from the registered one: %+v", got)
	}
	if got.StartTime.IsZero() || time.Since(got.StartTime) > time.Minute {
		t.Fatalf("start_time not set to the registration time: %v", got.StartTime)
	}
	if r.State() != registry.StateRegistered {
		t.Fatalf("state %v, want registered", r.State())
	}

	// The key is attached to a lease with the configured TTL.
	resp, err := cli.Get(context.Background(), r.Key())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("key %s: %v %v", r.Key(), resp, err)
	}
	if resp.Kvs[0].Lease == 0 {
		t.Fatal("instance key has no lease")
	}
	ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != 1 {
		t.Fatalf("lease TTL: %+v %v, want granted TTL 1s", ttl, err)
	}
}

func TestRegisterDelay(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	const delay = 400 * time.Millisecond
	r, err := registry.NewRegistrar(registry.Config{
		Client: cli, Instance: registry.Instance{App: "order", ID: "o-1", Addr: "127.0.0.1:9001"},
		RegisterDelay: delay, Logger: quiet(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	done := make(chan error, 1)
	begin := time.Now()
	go func() { done <- r.Register(context.Background()) }()

	time.Sleep(delay / 4)
	if resp, err := cli.Get(context.Background(), r.Key()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("key present %v into a %v RegisterDelay (err %v)", delay/4, delay, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < delay {
		t.Fatalf("Register returned after %v, before RegisterDelay %v", took, delay)
	}
	if resp, err := cli.Get(context.Background(), r.Key()); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("key absent after Register returned (err %v)", err)
	}

	// A cancelled ctx ends the delay at once with ctx.Err().
	r2, err := registry.NewRegistrar(registry.Config{
		Client: cli, Instance: registry.Instance{App: "order", ID: "o-2", Addr: "127.0.0.1:9002"},
		RegisterDelay: time.Hour, Logger: quiet(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r2.Register(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register with an expiring ctx during the delay = %v, want context.DeadlineExceeded", err)
	}
}

func TestReadinessGating(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)

	t.Run("registers once every check passes", func(t *testing.T) {
		var calls atomic.Int32
		cacheWarm := errors.New("cache still loading")
		r, err := registry.NewRegistrar(registry.Config{
			Client:   cli,
			Instance: registry.Instance{App: "order", ID: "ready-1", Addr: "127.0.0.1:9001"},
			Checks: []registry.Check{
				{Name: "db", Func: func(context.Context) error { return nil }},
				{Name: "cache", Func: func(context.Context) error {
					if calls.Add(1) < 4 {
						return cacheWarm
					}
					return nil
				}},
			},
			CheckInterval: 20 * time.Millisecond, Logger: quiet(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close(context.Background())
		if err := r.Register(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := calls.Load(); n != 4 {
			t.Fatalf("cache check ran %d times, want 4 (3 failures, then a pass)", n)
		}
		if resp, _ := cli.Get(context.Background(), r.Key()); len(resp.Kvs) != 1 {
			t.Fatal("not registered after the checks passed")
		}
	})

	t.Run("times out naming the check", func(t *testing.T) {
		r, err := registry.NewRegistrar(registry.Config{
			Client:   cli,
			Instance: registry.Instance{App: "order", ID: "ready-2", Addr: "127.0.0.1:9002"},
			Checks: []registry.Check{
				{Name: "db", Func: func(context.Context) error { return nil }},
				{Name: "kafka", Func: func(context.Context) error { return errors.New("broker 3 unreachable") }},
			},
			CheckInterval: 20 * time.Millisecond, CheckTimeout: 300 * time.Millisecond, Logger: quiet(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close(context.Background())
		err = r.Register(context.Background())
		var re *registry.ReadinessError
		if !errors.As(err, &re) || re.Check != "kafka" || !errors.Is(err, registry.ErrNotReady) {
			t.Fatalf("Register = %v, want a ReadinessError naming check \"kafka\"", err)
		}
		want := `registry: readiness check "kafka" did not pass within 300ms: broker 3 unreachable; the instance was not registered`
		if err.Error() != want {
			t.Fatalf("error text\n got %q\nwant %q", err, want)
		}
		if resp, _ := cli.Get(context.Background(), r.Key()); len(resp.Kvs) != 0 {
			t.Fatal("registered although a readiness check failed")
		}
	})
}

func TestDeregisterIsSeenQuicklyAndRegisterAgainWorks(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rec := watch(t, cli, "order")
	r := register(t, cli, "order", "o-1", "127.0.0.1:9001")
	register(t, cli, "order", "o-2", "127.0.0.1:9002")
	rec.waitFor(t, 5*time.Second, "both instances", hasIDs("o-1", "o-2"))

	begin := time.Now()
	if err := r.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, time.Second, "o-1 gone", hasIDs("o-2"))
	t.Logf("deregistration seen by the watcher %v after Deregister was called", time.Since(begin))
	if r.State() != registry.StateUnregistered {
		t.Fatalf("state %v after Deregister", r.State())
	}

	// The lease lives on (so re-registering is one Put) and the key stays away across it.
	time.Sleep(1500 * time.Millisecond) // > TTL: a keepalive that re-put the key would show now
	if resp, _ := cli.Get(context.Background(), r.Key()); len(resp.Kvs) != 0 {
		t.Fatal("deregistered key came back")
	}
	if err := r.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, time.Second, "o-1 back", hasIDs("o-1", "o-2"))
}

func TestUpdateReputsUnderTheSameLease(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	rec := watch(t, cli, "order")
	r := register(t, cli, "order", "o-1", "127.0.0.1:9001")
	rec.waitFor(t, 5*time.Second, "o-1", hasIDs("o-1"))
	before, _ := cli.Get(context.Background(), r.Key())

	err := r.Update(context.Background(), func(in *registry.Instance) {
		in.Channel = "trade"
		in.TrafficWeight = 0
	})
	if err != nil {
		t.Fatal(err)
	}
	got := rec.waitFor(t, time.Second, "traffic_weight 0", func(in []registry.Instance) bool {
		return len(in) == 1 && in[0].Channel == "trade" && in[0].TrafficWeight == 0
	})
	after, _ := cli.Get(context.Background(), r.Key())
	if after.Kvs[0].Lease != before.Kvs[0].Lease {
		t.Fatalf("Update changed the lease: %x -> %x", before.Kvs[0].Lease, after.Kvs[0].Lease)
	}
	if !got[0].StartTime.Equal(r.Instance().StartTime) {
		t.Fatal("Update changed start_time")
	}

	// Leaving the channel resets traffic_weight to 100, as DESIGN.md requires.
	if err := r.Update(context.Background(), func(in *registry.Instance) { in.Channel = "" }); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, time.Second, "traffic_weight back to 100", func(in []registry.Instance) bool {
		return len(in) == 1 && in[0].Channel == "" && in[0].TrafficWeight == 100
	})

	for name, fn := range map[string]func(*registry.Instance){
		"addr":   func(in *registry.Instance) { in.Addr = "127.0.0.1:1" },
		"id":     func(in *registry.Instance) { in.ID = "other" },
		"weight": func(in *registry.Instance) { in.Weight = -1 },
	} {
		if err := r.Update(context.Background(), fn); err == nil {
			t.Errorf("Update changing %s was accepted", name)
		}
	}
	if in := r.Instance(); in.Addr != "127.0.0.1:9001" || in.Weight != 100 {
		t.Fatalf("a refused Update changed the record: %+v", in)
	}
}

func TestCloseRevokesTheLease(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	r := register(t, cli, "order", "o-1", "127.0.0.1:9001")
	resp, _ := cli.Get(context.Background(), r.Key())
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if resp, _ := cli.Get(context.Background(), r.Key()); len(resp.Kvs) != 0 {
		t.Fatal("key still there after Close")
	}
	if ttl, err := cli.TimeToLive(context.Background(), lease); err != nil || ttl.TTL != -1 {
		t.Fatalf("lease still alive after Close: %+v %v", ttl, err)
	}
	if err := r.Register(context.Background()); !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("Register after Close = %v, want ErrClosed", err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if r.State() != registry.StateClosed {
		t.Fatalf("state %v, want closed", r.State())
	}
}

func TestRegisterWithoutEtcdFailsClearly(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	r, err := registry.NewRegistrar(registry.Config{
		Client: cli, Instance: registry.Instance{App: "order", ID: "o-1", Addr: "127.0.0.1:9001"},
		RequestTimeout: 300 * time.Millisecond, Logger: quiet(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	begin := time.Now()
	err = r.Register(context.Background())
	if !errors.Is(err, registry.ErrEtcdUnavailable) {
		t.Fatalf("Register with etcd down = %v, want ErrEtcdUnavailable", err)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Fatalf("Register took %v to give up; RequestTimeout is 300ms", took)
	}
	t.Logf("error: %v", err)
	if r.State() == registry.StateRegistered {
		t.Fatal("state says registered")
	}
}

func TestNewRegistrarRefusesBadConfig(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ok := registry.Instance{App: "order", ID: "o-1", Addr: "127.0.0.1:9001"}
	cases := map[string]registry.Config{
		"nil client":  {Instance: ok},
		"bad prefix":  {Client: cli, Instance: ok, Prefix: "switchyard/"},
		"bad addr":    {Client: cli, Instance: registry.Instance{App: "order", ID: "o-1", Addr: "nohost"}},
		"negative":    {Client: cli, Instance: ok, TTL: -time.Second},
		"check name":  {Client: cli, Instance: ok, Checks: []registry.Check{{Func: func(context.Context) error { return nil }}}},
		"check func":  {Client: cli, Instance: ok, Checks: []registry.Check{{Name: "db"}}},
		"bad color":   {Client: cli, Instance: registry.Instance{App: "order", ID: "o-1", Addr: "h:1", Color: "Blue"}},
		"neg. delay":  {Client: cli, Instance: ok, RegisterDelay: -1},
		"missing app": {Client: cli, Instance: registry.Instance{ID: "o-1", Addr: "h:1"}},
	}
	for name, cfg := range cases {
		if _, err := registry.NewRegistrar(cfg); err == nil || err.Error()[:9] != "registry:" {
			t.Errorf("%s: NewRegistrar = %v, want an error with the package prefix", name, err)
		}
	}
}

// stateLog collects a Registrar's state changes.
type stateLog struct {
	mu      sync.Mutex
	changes []registry.StateChange
}

func (s *stateLog) add(c registry.StateChange) {
	s.mu.Lock()
	s.changes = append(s.changes, c)
	s.mu.Unlock()
}

func (s *stateLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := ""
	for _, c := range s.changes {
		out += fmt.Sprintf("%v->%v ", c.From, c.To)
	}
	return out
}

// saw reports whether the log contains the transitions in order (not necessarily adjacent).
func (s *stateLog) saw(seq ...registry.State) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for _, c := range s.changes {
		if i < len(seq) && c.To == seq[i] {
			i++
		}
	}
	return i == len(seq)
}

func TestWritesThatFailDuringAPartitionAreRetriedInTheBackground(t *testing.T) {
	e := etcdtest.Start(t)
	cli, observer := e.Client(t), e.DirectClient(t)
	rec := watch(t, observer, "order")
	short := func(c *registry.Config) { c.TTL, c.RequestTimeout = 5*time.Second, 300*time.Millisecond }
	upd := register(t, cli, "order", "o-1", "127.0.0.1:9001", short)
	dereg := register(t, cli, "order", "o-2", "127.0.0.1:9002", short)
	rec.waitFor(t, 5*time.Second, "both", hasIDs("o-1", "o-2"))

	e.Cut()
	err := upd.Update(context.Background(), func(in *registry.Instance) { in.Channel, in.TrafficWeight = "trade", 0 })
	if !errors.Is(err, registry.ErrEtcdUnavailable) {
		t.Fatalf("Update during a partition = %v, want ErrEtcdUnavailable", err)
	}
	if err := dereg.Deregister(context.Background()); !errors.Is(err, registry.ErrEtcdUnavailable) {
		t.Fatalf("Deregister during a partition = %v, want ErrEtcdUnavailable", err)
	}
	e.Heal()

	// Without another call, etcd converges to what was asked: o-1 drained, o-2 gone.
	rec.waitFor(t, 10*time.Second, "o-1 updated and o-2 deregistered", func(in []registry.Instance) bool {
		return len(in) == 1 && in[0].ID == "o-1" && in[0].Channel == "trade" && in[0].TrafficWeight == 0
	})
	// The watch event can arrive before the keeper has recorded its success.
	for deadline := time.Now().Add(2 * time.Second); upd.State() != registry.StateRegistered || dereg.State() != registry.StateUnregistered; {
		if time.Now().After(deadline) {
			t.Fatalf("states after healing: %v, %v; want registered, unregistered", upd.State(), dereg.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
