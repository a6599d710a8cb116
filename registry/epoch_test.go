package registry_test

import (
	"context"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// offlineFlag is a server interceptor that answers every call with the offline flag while on
// is set, as lifecycle does while an instance drains; flagged counts those answers.
type offlineFlag struct{ on, flagged atomic.Int64 }

func (f *offlineFlag) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if f.on.Load() != 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(deploy.OfflineHeader, "1"))
		f.flagged.Add(1)
	}
	return resp, err
}

// Issue 12 case 5: a consumer cut off from etcd marks an instance offline; the instance goes
// /offline then /online (Deregister, Register: the same record, registered anew); when the
// link heals the consumer must pick the instance again.
func TestANewRegistrationClearsAnOfflineMark(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	direct := e.DirectClient(t)
	flag := &offlineFlag{}
	addr1, _ := testutil.ServeGreeter(t, "g-1", grpc.UnaryInterceptor(flag.intercept))
	addr2, _ := testutil.ServeGreeter(t, "g-2")
	r1 := register(t, direct, "greeter", "g-1", addr1)
	r2 := register(t, direct, "greeter", "g-2", addr2)
	c := dial(t, e.Client(t), "greeter") // the consumer's link goes through the proxy
	cl := startCaller(t, c)
	cl.waitCalls(t, nil, 20, "g-1", "g-2")

	e.Cut()
	flag.on.Store(1)
	testutil.Eventually(t, "g-1 to answer a call with the offline flag", func() bool { return flag.flagged.Load() > 0 })
	base := cl.settled(t)
	cl.waitCalls(t, base, 50, "g-2")
	if n := cl.counts()["g-1"] - base["g-1"]; n != 0 {
		t.Fatalf("g-1 answered %d calls after it flagged itself offline", n)
	}
	// What /offline then /online does, while the consumer cannot see it.
	if err := r1.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r1.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	flag.on.Store(0)
	// A later change, to know when the consumer has seen the ones before it.
	if err := r2.Update(context.Background(), func(in *registry.Record) { in.Weight = 51 }); err != nil {
		t.Fatal(err)
	}
	e.Heal()
	c.resolved(t, "g-2's later change", func(in []registry.Record) bool {
		return len(in) == 2 && in[1].Weight == 51
	})
	cl.waitCalls(t, cl.counts(), 20, "g-1", "g-2")
	cl.stopAndRequireNoFailures(t)
}
