package main

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sy runs the command with the etcd endpoints of e, returning exit code, stdout and stderr.
func sy(t *testing.T, e *etcdtest.Server, args ...string) (int, string, string) {
	t.Helper()
	return syCtx(t, context.Background(), e, args...)
}

func syCtx(t *testing.T, ctx context.Context, e *etcdtest.Server, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut syncBuffer
	code := syTo(ctx, e, time.Second, &out, &errOut, args...)
	return code, out.String(), errOut.String()
}

// syTo runs the command with the etcd endpoints of e and the given --timeout, writing to out
// and errOut.
func syTo(ctx context.Context, e *etcdtest.Server, timeout time.Duration, out, errOut io.Writer, args ...string) int {
	env := func(k string) string {
		if k == "SWITCHYARD_ETCD_ENDPOINTS" {
			return strings.Join(e.Endpoints(), ",")
		}
		return ""
	}
	return run(ctx, append(args, "--timeout", timeout.String()), out, errOut, env)
}

// syncBuffer is a strings.Builder that the command (watch writes from the rule client's
// subscriber goroutine) and the test may use at the same time.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestAReleaseFromTheCommandLine(t *testing.T) {
	e := etcdtest.Start(t)
	if code, out, errs := sy(t, e, "channel", "open", "trade", "--apps", "order,inventory"); code != 0 || !strings.Contains(out, "releasing") {
		t.Fatalf("open: %d %q %q", code, out, errs)
	}
	if code, out, _ := sy(t, e, "channel", "shift", "trade", "--blue", "1"); code != 0 || !strings.Contains(out, "blue   1.0%") {
		t.Fatalf("shift: %d %q", code, out)
	}
	code, out, _ := sy(t, e, "channel", "status", "trade", "-o", "json")
	var rules []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &rules) != nil || len(rules) != 1 || rules[0]["blue_percent"] != 1.0 {
		t.Fatalf("status -o json: %d %q", code, out)
	}
	if code, out, _ := sy(t, e, "channel", "list"); code != 0 || !strings.Contains(out, "trade") || !strings.Contains(out, "apps=inventory,order") {
		t.Fatalf("list: %d %q", code, out)
	}
	if code, out, _ := sy(t, e, "channel", "finish", "trade"); code != 0 || !strings.Contains(out, "closed") || !strings.Contains(out, "blue  50.0%") {
		t.Fatalf("finish: %d %q", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, _ := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatal("open failed")
	}
	for _, c := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"channel", "shift", "nope", "--blue", "1"}, 1, "unknown channel"},
		{[]string{"channel", "shift", "trade", "--blue", "150"}, 1, "from 0 to 100"},
		{[]string{"channel", "open", "other", "--apps", "order"}, 1, "already in another open channel"},
		{[]string{"channel", "shift", "trade"}, 2, "--blue"},
		{[]string{"channel", "open", "x"}, 2, "--apps"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{}, 2, "usage"},
		{[]string{"channel", "list", "-o", "yaml"}, 2, "json"},
	} {
		code, _, errs := sy(t, e, c.args...)
		if code != c.code || !strings.Contains(errs, c.say) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, errs, c.code, c.say)
		}
	}
	e.Stop()
	// The command gives up after its --timeout; a short one makes the test no weaker.
	var out, errs syncBuffer
	if code := syTo(context.Background(), e, 200*time.Millisecond, &out, &errs, "channel", "list"); code != 3 || !strings.Contains(errs.String(), "etcd unreachable") {
		t.Fatalf("etcd down: exit %d %q, want 3", code, errs.String())
	}
}

func TestInstancesAndWatch(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	reg, err := registry.NewRegistrar(registry.Config{Client: cli, Logger: testutil.Logger(t), Instance: registry.Record{
		App: "order", ID: "order-1", Addr: "10.0.0.1:9000", Color: deploy.Blue, Version: "v2", Warmup: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(context.Background())
	if err := reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, out, _ := sy(t, e, "instances", "order")
	if code != 0 || !strings.Contains(out, "order-1") || !strings.Contains(out, "10.0.0.1:9000") || !strings.Contains(out, "blue") {
		t.Fatalf("instances: %d %q", code, out)
	}
	if _, err := cli.Put(context.Background(), "/switchyard/services/order/broken", "{"); err != nil {
		t.Fatal(err)
	}
	code, out, errs := sy(t, e, "instances", "order")
	if code != 0 || !strings.Contains(out, "order-1") || !strings.Contains(errs, "skipping malformed record /switchyard/services/order/broken") {
		t.Fatalf("instances with a malformed record: %d %q %q", code, out, errs)
	}
	code, out, _ = sy(t, e, "instances", "order", "-o", "json")
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0]["warmup_left_ms"].(float64) <= 0 {
		t.Fatalf("instances -o json: %d %q", code, out)
	}
	if _, ok := list[0]["degraded"]; ok {
		t.Fatalf("instances -o json shows degraded for a healthy instance: %q", out)
	}
	if err := reg.Update(context.Background(), func(in *registry.Record) { in.Degraded = "no serving blue instance of stock" }); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := sy(t, e, "instances", "order"); code != 0 || !strings.Contains(out, "DEGRADED") || !strings.Contains(out, "no serving blue instance of stock") {
		t.Fatalf("instances of a degraded instance: %d %q", code, out)
	}

	// watch prints events as they happen, until interrupted.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wout, werr syncBuffer
	exit := make(chan int, 1)
	go func() { exit <- syTo(ctx, e, time.Second, &wout, &werr, "watch", "trade") }()
	if code, out, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %q %q", code, out, errs)
	}
	// The open reaches the watch (replayed if it subscribed after, live if before); the shift,
	// made once the watch has printed, can only reach it live.
	testutil.Eventually(t, "watch printing trade OnStart", func() bool { return strings.Contains(wout.String(), "trade OnStart") })
	if code, out, errs := sy(t, e, "channel", "shift", "trade", "--blue", "0"); code != 0 {
		t.Fatalf("shift: %d %q %q", code, out, errs)
	}
	want := []string{"trade OnStart", "trade OnFlowChange 50→0", "trade OnEnterAllGreen"}
	printed := func() []string {
		var events []string
		for _, line := range strings.Split(strings.TrimSpace(wout.String()), "\n") {
			if _, event, ok := strings.Cut(line, "  "); ok { // "15:04:05.000  trade OnStart"
				events = append(events, event)
			}
		}
		return events
	}
	testutil.Eventually(t, "watch printing the shift's events", func() bool { return len(printed()) >= len(want) })
	cancel()
	if code := testutil.Receive(t, "watch to return once interrupted", exit); code != 0 {
		t.Fatalf("watch exited %d when interrupted, want 0; stderr %q", code, werr.String())
	}
	if got := printed(); !slices.Equal(got, want) {
		t.Fatalf("watch printed %q, want %q:\n%s", got, want, wout.String())
	}
}

// One garbage key under channels/ hides nothing else: list and status show the rest with a
// warning naming the key, the open release can still be drained and finished, and open
// refuses only what the key may name, naming it.
func TestAGarbageRuleDoesNotHideTheRest(t *testing.T) {
	e := etcdtest.Start(t)
	if code, out, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %q %q", code, out, errs)
	}
	if _, err := e.Client(t).Put(context.Background(), "/switchyard/channels/junk", "\x00garbage"); err != nil {
		t.Fatal(err)
	}
	warned := func(errs string) bool {
		return strings.Contains(errs, "warning") && strings.Contains(errs, "/switchyard/channels/junk") && strings.Contains(errs, "channel delete junk --yes")
	}
	for _, args := range [][]string{{"channel", "list"}, {"channel", "status"}, {"channel", "status", "trade"}} {
		if code, out, errs := sy(t, e, args...); code != 0 || !strings.Contains(out, "trade") || !strings.Contains(out, "releasing") || !warned(errs) {
			t.Fatalf("%v beside a garbage key: exit %d, stdout %q, stderr %q; want trade shown and a warning naming the key and how to delete it", args, code, out, errs)
		}
	}
	code, out, errs := sy(t, e, "channel", "list", "-o", "json")
	var rules []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &rules) != nil || len(rules) != 1 || rules[0]["channel"] != "trade" || !warned(errs) {
		t.Fatalf("list -o json beside a garbage key: %d %q %q", code, out, errs)
	}
	if code, out, errs := sy(t, e, "channel", "shift", "trade", "--blue", "0"); code != 0 || !strings.Contains(out, "blue   0.0%") || !warned(errs) {
		t.Fatalf("shift beside a garbage key: %d %q %q", code, out, errs)
	}
	if code, out, errs := sy(t, e, "channel", "status", "junk"); code != 1 || !strings.Contains(errs, "/switchyard/channels/junk") {
		t.Fatalf("status of the garbage key: %d %q %q; want exit 1 naming the key", code, out, errs)
	}
	if code, out, errs := sy(t, e, "channel", "open", "pay", "--apps", "wallet"); code != 1 || !strings.Contains(errs, "/switchyard/channels/junk") {
		t.Fatalf("open beside a key that may name any app: %d %q %q; want exit 1 naming the key", code, out, errs)
	}
	if code, out, errs := sy(t, e, "channel", "finish", "trade"); code != 0 || !strings.Contains(out, "closed") {
		t.Fatalf("finish beside a garbage key: %d %q %q", code, out, errs)
	}
}

// channel delete asks for --yes (saying what it would delete), deletes a broken key or a
// closed rule, and refuses an open release unless --force.
func TestChannelDelete(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	for _, args := range [][]string{{"channel", "open", "trade", "--apps", "order"}, {"channel", "open", "pay", "--apps", "wallet"}, {"channel", "finish", "pay"}} {
		if code, out, errs := sy(t, e, args...); code != 0 {
			t.Fatalf("%v: %d %q %q", args, code, out, errs)
		}
	}
	if _, err := cli.Put(ctx, "/switchyard/channels/junk", "\x00garbage"); err != nil {
		t.Fatal(err)
	}
	exists := func(ch string) bool {
		t.Helper()
		resp, err := cli.Get(ctx, "/switchyard/channels/"+ch)
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Kvs) == 1
	}
	for _, c := range []struct {
		args    []string
		code    int
		say     []string
		deleted bool
	}{
		{[]string{"channel", "delete", "junk"}, 2, []string{"would delete /switchyard/channels/junk", "unreadable", `\x00garbage`, "--yes"}, false},
		{[]string{"channel", "delete", "trade"}, 2, []string{"would delete /switchyard/channels/trade", "OPEN at blue 50%", "--force"}, false},
		{[]string{"channel", "delete", "trade", "--yes"}, 1, []string{"release already open", "finish it first", "--force"}, false},
		{[]string{"channel", "delete", "nope", "--yes"}, 1, []string{"unknown channel"}, false},
		{[]string{"channel", "delete"}, 2, []string{"missing channel name"}, false},
		{[]string{"channel", "delete", "junk", "--yes"}, 0, nil, true},
		{[]string{"channel", "delete", "pay", "--yes"}, 0, nil, true},
		{[]string{"channel", "delete", "--yes", "--force", "trade"}, 0, nil, true},
	} {
		code, out, errs := sy(t, e, c.args...)
		ok := code == c.code
		for _, s := range c.say {
			ok = ok && strings.Contains(errs, s)
		}
		ch := ""
		for _, a := range c.args[2:] {
			if !strings.HasPrefix(a, "--") {
				ch = a
			}
		}
		if c.deleted {
			ok = ok && strings.Contains(out, "deleted /switchyard/channels/"+ch)
		}
		if !ok {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q; want exit %d, stderr mentioning %q", c.args, code, out, errs, c.code, c.say)
		}
		if ch != "" && ch != "nope" && exists(ch) == c.deleted {
			t.Fatalf("%v: key exists=%v after exit %d", c.args, exists(ch), code)
		}
	}
	if code, out, errs := sy(t, e, "channel", "list"); code != 0 || out != "" || errs != "" {
		t.Fatalf("list after deleting every key: %d %q %q", code, out, errs)
	}
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"channel", "--help"}} {
		var out, errs syncBuffer
		// No etcd: help must not need one.
		code := run(context.Background(), args, &out, &errs, func(string) string { return "" })
		if code != 0 || !strings.Contains(out.String(), "usage: switchyard") || errs.String() != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 0 with the usage on stdout", args, code, out.String(), errs.String())
		}
	}
}

func TestAShiftSaysWhy(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %d %s", code, errs)
	}
	code, out, errs := sy(t, e, "channel", "shift", "trade", "--blue", "1", "--reason", "canary of v2, ticket OPS-42")
	if code != 0 || !strings.Contains(out, "last change: canary of v2, ticket OPS-42") {
		t.Fatalf("shift --reason: %d %q %q", code, out, errs)
	}
	if code, out, _ := sy(t, e, "channel", "status", "trade", "-o", "json"); code != 0 || !strings.Contains(out, `"reason":"canary of v2, ticket OPS-42"`) {
		t.Fatalf("status -o json: %d %q", code, out)
	}
	if code, _, errs := sy(t, e, "channel", "shift", "trade", "--blue", "2", "--reason", "two\nlines"); code != 1 || !strings.Contains(errs, "reason") {
		t.Fatalf("a reason on two lines: exit %d %q; want 1 naming the reason", code, errs)
	}
}
