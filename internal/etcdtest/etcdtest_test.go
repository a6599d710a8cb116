package etcdtest_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStopStartKeepsDataAndEndpoint(t *testing.T) {
	s := etcdtest.Start(t)
	c := s.Client(t)
	ctx := context.Background()
	if _, err := c.Put(ctx, "/k", "v1"); err != nil {
		t.Fatal(err)
	}
	eps := s.Endpoints()

	begin := time.Now()
	s.Stop()
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("Stop took %v; the proxy should cut client streams so etcd stops at once", d)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := c.Get(short, "/k")
	cancel()
	if err == nil {
		t.Fatal("Get succeeded while etcd was stopped")
	}

	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if got := s.Endpoints(); got[0] != eps[0] {
		t.Fatalf("endpoint changed across restart: %v -> %v", eps, got)
	}
	long, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.Get(long, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("data lost across restart: %v", resp.Kvs)
	}
}

func TestCutLeavesDirectEndpointWorking(t *testing.T) {
	s := etcdtest.Start(t)
	viaProxy, direct := s.Client(t), s.DirectClient(t)
	ctx := context.Background()
	s.Cut()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := viaProxy.Put(short, "/a", "1")
	cancel()
	if err == nil {
		t.Fatal("Put through a cut proxy succeeded")
	}
	if _, err := direct.Put(ctx, "/b", "2"); err != nil {
		t.Fatalf("direct Put during a cut: %v", err)
	}
	rev, err := s.Compact(ctx)
	if err != nil || rev == 0 {
		t.Fatalf("Compact: rev %d, %v", rev, err)
	}
	s.Heal()
	long, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := viaProxy.Get(long, "/b")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get after Heal: %v %v", resp, err)
	}
}
