package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/release"
)

// driveTrade runs, in the background until the test ends, a plan on channel trade (open)
// whose first step holds (no instances answer), with a runner on cli; it returns once the
// runner drives the plan.
func driveTrade(t *testing.T, cli *clientv3.Client) *release.Runner {
	t.Helper()
	r, err := release.New(release.Config{Client: cli, Poll: 50 * time.Millisecond, Timeout: 300 * time.Millisecond, Owner: "runner-1", Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	plan := release.Plan{Channel: "trade", New: deploy.Blue, Analysis: release.Analysis{MinRequests: 20},
		Steps: []release.Step{{Percent: 10, Hold: release.Duration(time.Minute)}, {Percent: 100, Hold: release.Duration(time.Minute)}}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = r.Run(ctx, plan) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	testutil.Eventually(t, "runner-1 to drive trade", func() bool {
		p, err := r.Status(context.Background(), "trade")
		return err == nil && p.Runner == "runner-1" && p.State == release.Running
	})
	return r
}

// With etcd gone, release pause and release status try for --timeout and no longer, then
// exit 3 saying what they tried and that nothing was recorded.
func TestAReleaseCommandTriesEtcdForItsTimeout(t *testing.T) {
	e := etcdtest.Start(t)
	e.Stop()
	for _, args := range [][]string{{"release", "pause", "trade"}, {"release", "status", "trade"}} {
		start := time.Now()
		code, _, errs := syAt(t, e.Endpoints(), 700*time.Millisecond, args...)
		took := time.Since(start)
		if code != exitUnreachable || !strings.Contains(errs, "etcd unreachable") || !strings.Contains(errs, "within --timeout 700ms") ||
			!strings.Contains(errs, "attempts in") {
			t.Fatalf("%v with etcd down: exit %d, stderr %q; want 3, saying the attempts", args, code, errs)
		}
		if args[1] == "pause" && !strings.Contains(errs, "nothing was recorded") {
			t.Fatalf("pause with etcd down: %q; want it to say nothing was recorded", errs)
		}
		// The command's time is its --timeout; the margin is for an oversubscribed CPU.
		if took > 3*time.Second {
			t.Fatalf("%v with etcd down took %v with --timeout 700ms", args, took)
		}
	}
}

// A runner cut off from etcd does not carry the command out: with etcd answering the
// command, that is exit 1 (the command stays recorded), not 3.
func TestAReleaseCommandTheRunnerDoesNotCarryOutExitsOne(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := syAt(t, e.Endpoints(), 5*time.Second, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %q", code, errs)
	}
	driveTrade(t, e.Client(t)) // through the proxy
	e.Cut()
	defer e.Heal()
	code, _, errs := syAt(t, e.DirectEndpoints(), 700*time.Millisecond, "release", "pause", "trade")
	if code != exitRefused || !strings.Contains(errs, "runner runner-1 has not carried out pause within ") || !strings.Contains(errs, "the command stays recorded for it") {
		t.Fatalf("pause with the runner cut off: exit %d, stderr %q; want 1, saying the runner has not carried it out", code, errs)
	}
	code, out, _ := syAt(t, e.DirectEndpoints(), 5*time.Second, "release", "status", "trade")
	if code != 0 || !strings.Contains(out, "pending: pause by ") {
		t.Fatalf("status: %d %q; want the pause pending", code, out)
	}
}

// With a 3-member cluster whose leader was just killed, release pause and resume get their
// answer (the runner carried them out) well within --timeout. Before, a request forwarded to
// the dead leader waited out its one 5 s attempt, or the command failed with "etcd
// unavailable" although recorded.
func TestReleaseCommandsRideOutALeaderKill(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	eps := c.Endpoints()
	if code, _, errs := syAt(t, eps, 5*time.Second, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %q", code, errs)
	}
	r := driveTrade(t, c.Client(t))
	for _, step := range []struct {
		cmd   string
		state release.State
	}{
		{"pause", release.Paused},
		{"resume", release.Running},
		{"pause", release.Paused},
	} {
		lead := c.WaitLeader(t)
		c.Stop(lead)
		start := time.Now()
		code, out, errs := syAt(t, eps, 5*time.Second, "release", step.cmd, "trade")
		took := time.Since(start)
		if code != 0 || !strings.HasPrefix(out, "trade: "+string(step.state)+" at step 1/2") {
			t.Fatalf("release %s right after the leader was killed: exit %d after %v, stdout %q, stderr %q", step.cmd, code, took, out, errs)
		}
		t.Logf("release %s right after the leader was killed: exit 0 after %v", step.cmd, took.Round(time.Millisecond))
		// One attempt is 500 ms; --timeout is 5 s. The margin is for an oversubscribed CPU.
		if took > 3*time.Second {
			t.Errorf("release %s took %v after a leader kill; want about an attempt, well under --timeout", step.cmd, took)
		}
		if err := c.Restart(lead); err != nil {
			t.Fatal(err)
		}
		if p, err := r.Status(context.Background(), "trade"); err != nil || p.State != step.state || p.Command != "" {
			t.Fatalf("status after %s: %s pending %q, %v", step.cmd, p.State, p.Command, err)
		}
	}
}
