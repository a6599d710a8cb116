package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
)

// syAt runs the command against endpoints with the given --timeout.
func syAt(t *testing.T, endpoints []string, timeout time.Duration, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut syncBuffer
	env := func(k string) string {
		if k == "SWITCHYARD_ETCD_ENDPOINTS" {
			return strings.Join(endpoints, ",")
		}
		return ""
	}
	code := run(context.Background(), append(args, "--timeout", timeout.String()), &out, &errOut, env)
	return code, out.String(), errOut.String()
}

// With etcd gone, a write tries for its --timeout and no longer, then exits 3 saying what it
// tried, for how long, and that nothing was written.
func TestAWriteTriesEtcdForItsTimeout(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := syAt(t, e.Endpoints(), time.Second, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %q", code, errs)
	}
	e.Stop()
	start := time.Now()
	code, _, errs := syAt(t, e.Endpoints(), 700*time.Millisecond, "channel", "shift", "trade", "--blue", "1")
	took := time.Since(start)
	if code != exitUnreachable || !strings.Contains(errs, "etcd unreachable") || !strings.Contains(errs, "within --timeout 700ms") ||
		!strings.Contains(errs, "attempts in") || !strings.Contains(errs, "nothing was written") {
		t.Fatalf("shift with etcd down: exit %d, stderr %q; want 3, saying the attempts and that nothing was written", code, errs)
	}
	// The command's time is its --timeout; the margin is for an oversubscribed CPU.
	if took > 3*time.Second {
		t.Fatalf("shift with etcd down took %v with --timeout 700ms", took)
	}
}

// With a 3-member cluster whose leader was just killed, the channel commands get their
// answer from the new leader: exit 0, and the rule is as written.
func TestChannelCommandsRideOutALeaderKill(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	eps := c.Endpoints()
	if code, _, errs := syAt(t, eps, 5*time.Second, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %q", code, errs)
	}
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"channel", "shift", "trade", "--blue", "0"}, "blue   0.0%"},
		{[]string{"channel", "finish", "trade"}, "closed"},
	} {
		lead := c.WaitLeader(t)
		c.Stop(lead)
		start := time.Now()
		code, out, errs := syAt(t, eps, 5*time.Second, step.args...)
		took := time.Since(start)
		if code != 0 || !strings.Contains(out, step.want) {
			t.Fatalf("%v right after the leader was killed: exit %d after %v, stdout %q, stderr %q", step.args, code, took, out, errs)
		}
		t.Logf("%v right after the leader was killed: exit 0 after %v", step.args, took)
		if code, out, _ := syAt(t, eps, 5*time.Second, "channel", "status", "trade"); code != 0 || !strings.Contains(out, step.want) {
			t.Fatalf("status after %v: %d %q", step.args, code, out)
		}
		if err := c.Restart(lead); err != nil {
			t.Fatal(err)
		}
	}
}
