package lifecycle_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
)

// stopCtx is a component that notes whether its Stop's ctx had already ended.
type stopCtx struct{ cancelled chan bool }

func (c stopCtx) Start(context.Context) error { return nil }
func (c stopCtx) Stop(ctx context.Context) error {
	c.cancelled <- ctx.Err() != nil
	return nil
}

// Abort leaves things as a killed process does: the server answers nothing, the admin server
// is gone, the components' Stop gets a ctx already cancelled, and the record stays in etcd
// (no deregistration, no revocation) until its lease expires; Abort and Offline after it
// return at once.
func TestAbortStopsAtOnceAndLeavesTheRecord(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	comp := stopCtx{cancelled: make(chan bool, 1)}
	inst, err := lifecycle.New(config(t, cli, "a", func(c *lifecycle.Config) { c.TTL = time.Second }))
	if err != nil {
		t.Fatal(err)
	}
	inst.Append(comp)
	greeterpb.RegisterGreeterServer(inst.Server(), &greeter{id: "a"})
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	direct := testutil.Greeter(t, inst.Addr())
	greeterReady := func() error { _, err := call(direct, true); return err }
	if err := greeterReady(); err != nil {
		t.Fatal(err)
	}
	leaseOf := func() int64 {
		resp, err := cli.Get(context.Background(), "/switchyard/services/greeter/a")
		if err != nil || len(resp.Kvs) != 1 {
			return 0
		}
		return resp.Kvs[0].Lease
	}
	lease := leaseOf()
	if lease == 0 {
		t.Fatal("not registered before the abort")
	}

	began := time.Now()
	inst.Abort()
	t.Logf("Abort took %v", time.Since(began))
	if cancelled := testutil.Receive(t, "the component's Stop", comp.cancelled); !cancelled {
		t.Fatal("Abort stopped the component with a ctx still live; want one already cancelled")
	}
	if _, ok := record(t, cli, "a"); !ok {
		t.Fatal("the record left etcd at Abort; want it to stay until its lease expires, as after a crash")
	}
	if got := leaseOf(); got != lease {
		t.Fatalf("the record's lease is %x after Abort, was %x", got, lease)
	}
	if _, err := call(direct, false); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call to the aborted instance: %v; want Unavailable", err)
	}
	if _, err := http.Get("http://" + inst.AdminAddr() + "/healthz/live"); err == nil {
		t.Fatal("the admin server still answers after Abort")
	}
	if s := inst.State(); s != lifecycle.StateStopped {
		t.Fatalf("state after Abort: %s", s)
	}

	inst.Abort()
	if err := inst.Offline(context.Background()); err != nil {
		t.Fatalf("Offline after Abort: %v", err)
	}
	if err := inst.Drain(context.Background()); err != nil {
		t.Fatalf("Drain after Abort: %v", err)
	}
	if _, ok := record(t, cli, "a"); !ok {
		t.Fatal("Offline or Drain after Abort deregistered the record")
	}
	// The keepalive stopped: the lease expires and takes the record with it.
	testutil.Eventually(t, "the record to expire with its lease", func() bool { _, ok := record(t, cli, "a"); return !ok })
	t.Logf("the record expired %v after Abort (TTL 1 s)", time.Since(began))
}

// Abort on an instance that never started stops it: Start then fails saying why, and a
// Run that serves returns nil when the instance is aborted.
func TestAbortBeforeStartAndDuringRun(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	inst, err := lifecycle.New(config(t, cli, "new"))
	if err != nil {
		t.Fatal(err)
	}
	inst.Abort()
	if err := inst.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Fatalf("Start after Abort: %v; want an error saying it was aborted", err)
	}

	running, err := lifecycle.New(config(t, cli, "run"))
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- running.Run(context.Background()) }()
	testutil.Eventually(t, "the instance to serve", func() bool { return running.State() == lifecycle.StateServing })
	running.Abort()
	if err := testutil.Receive(t, "Run to return", ran); err != nil {
		t.Fatalf("Run after Abort: %v; want nil", err)
	}
	if _, ok := record(t, cli, "run"); !ok {
		t.Fatal("Run deregistered the aborted instance")
	}
}
