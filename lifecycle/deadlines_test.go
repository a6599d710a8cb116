package lifecycle_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
)

// Issue 13 item 5: an instance started while etcd is down keeps trying, with one log line
// per attempt, until StartTimeout, and starts once etcd answers; it does not give up after
// one etcd request.
func TestStartWhileEtcdIsDownWaitsForEtcd(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	logs := newLogLines(t)
	inst, err := lifecycle.New(config(t, cli, "a", func(c *lifecycle.Config) {
		c.RequestTimeout = 200 * time.Millisecond
		c.StartTimeout = testutil.Deadline
		c.Logger = logs.logger()
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	began := time.Now()
	started := make(chan error, 1)
	go func() { started <- inst.Start(context.Background()) }()
	const attempts = 3
	testutil.Eventually(t, "three attempts to reach etcd logged", func() bool {
		select {
		case err := <-started:
			t.Fatalf("Start returned after %v while etcd was down: %v; want it to keep trying until StartTimeout (%v)",
				time.Since(began).Round(time.Millisecond), err, testutil.Deadline)
		default:
		}
		return logs.count("lifecycle: etcd did not answer", "attempt=") >= attempts
	})
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	answered := time.Now()
	if err := testutil.Receive(t, "Start to return", started); err != nil {
		t.Fatalf("Start after etcd came back: %v", err)
	}
	t.Logf("started %v after etcd answered, %d attempts logged", time.Since(answered).Round(time.Millisecond),
		logs.count("lifecycle: etcd did not answer", "attempt="))
	if s := inst.State(); s != lifecycle.StateServing {
		t.Fatalf("state %v after Start; want serving", s)
	}
	resp, err := e.DirectClient(t).Get(context.Background(), deploy.AppPrefix(deploy.DefaultPrefix, "greeter")+"a")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record of a after Start: %v (err %v); want it registered", resp, err)
	}
}

// Issue 13 item 5: during an etcd outage Offline (what SIGTERM runs) returns within its
// documented bound, MaxDrain + StopTimeout + RequestTimeout + 1 s, instead of waiting
// 5 s for each etcd request.
func TestOfflineDuringAnEtcdOutageIsBounded(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	var cfg lifecycle.Config
	inst, _ := start(t, cli, "a", func(c *lifecycle.Config) {
		c.RequestTimeout = 300 * time.Millisecond
		c.MaxDrain, c.StopTimeout = time.Second, time.Second
		cfg = *c
	})
	e.Stop()
	began := time.Now()
	err := inst.Offline(context.Background())
	took := time.Since(began)
	bound := cfg.MaxDrain + cfg.StopTimeout + cfg.RequestTimeout + time.Second
	t.Logf("Offline with etcd down took %v (bound %v): %v", took.Round(time.Millisecond), bound, err)
	if took > bound {
		t.Fatalf("Offline with etcd down took %v; want at most MaxDrain + StopTimeout + RequestTimeout + 1s = %v", took.Round(time.Millisecond), bound)
	}
	if s := inst.State(); s != lifecycle.StateStopped {
		t.Fatalf("state %v after Offline; want stopped", s)
	}
}

// When etcd stays down, Start gives up at StartTimeout with an error that says so.
func TestStartGivesUpOnEtcdAtStartTimeout(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	inst, err := lifecycle.New(config(t, cli, "a", func(c *lifecycle.Config) {
		c.RequestTimeout = 200 * time.Millisecond
		c.StartTimeout = 700 * time.Millisecond
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	began := time.Now()
	err = inst.Start(context.Background())
	took := time.Since(began)
	t.Logf("Start gave up after %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, registry.ErrEtcdUnavailable) || !strings.Contains(err.Error(), "etcd did not answer within StartTimeout (700ms") {
		t.Fatalf("Start with etcd down = %v; want ErrEtcdUnavailable saying etcd did not answer within StartTimeout", err)
	}
	if took < 700*time.Millisecond {
		t.Fatalf("Start gave up after %v, before StartTimeout (700ms)", took)
	}
	if s := inst.State(); s != lifecycle.StateStopped {
		t.Fatalf("state %v after a failed Start; want stopped", s)
	}
}
