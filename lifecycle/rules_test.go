package lifecycle_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// logLines is a slog.Handler that keeps every record as "msg k=v …" (and passes it on to the
// test's logger), so a test can wait for what an instance logged.
type logLines struct {
	next  slog.Handler
	mu    *sync.Mutex
	lines *[]string
	attrs []slog.Attr
}

func newLogLines(t testing.TB) *logLines {
	return &logLines{next: testutil.Logger(t).Handler(), mu: &sync.Mutex{}, lines: new([]string)}
}

func (l *logLines) logger() *slog.Logger { return slog.New(l) }

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }

func (l *logLines) Handle(ctx context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	for _, a := range l.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	rec.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	l.mu.Lock()
	*l.lines = append(*l.lines, b.String())
	l.mu.Unlock()
	if l.next.Enabled(ctx, rec.Level) {
		return l.next.Handle(ctx, rec)
	}
	return nil
}

func (l *logLines) WithAttrs(as []slog.Attr) slog.Handler {
	c := *l
	c.attrs = append(append([]slog.Attr(nil), l.attrs...), as...)
	c.next = l.next.WithAttrs(as)
	return &c
}

func (l *logLines) WithGroup(string) slog.Handler { return l }

// has reports whether a logged line contains every one of parts.
func (l *logLines) has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range *l.lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// count is how many logged lines contain every one of parts.
func (l *logLines) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range *l.lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			n++
		}
	}
	return n
}

// record is instance id's record in etcd; ok is false when there is none.
func record(t *testing.T, cli *clientv3.Client, id string) (registry.Record, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/switchyard/services/greeter/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return registry.Record{}, false
	}
	in, err := registry.Unmarshal(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return in, true
}

// putRule writes a channel's rule to etcd directly, as an operator repairing it would.
func putRule(t *testing.T, cli *clientv3.Client, channel string, apps []string, releasing bool, percent float64) {
	t.Helper()
	r, err := traffic.NewRule(channel, apps, releasing, percent)
	if err != nil {
		t.Fatal(err)
	}
	b, err := traffic.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), deploy.ChannelKey(deploy.DefaultPrefix, channel), string(b)); err != nil {
		t.Fatal(err)
	}
}

// Issue 12, case 4: blue is drained, the channel's rule becomes unreadable, and blue is
// restarted. The new process has no last good rule; it must not register as if no release
// were open (full weight, no channel) but wait, not ready and unregistered, until the rule can
// be read, and then start drained. An instance that was already running keeps its last good
// rule.
func TestUnreadableRuleKeepsARestartedInstanceOut(t *testing.T) {
	for _, tc := range []struct{ name, bad string }{
		{"garbage", "\x00\x01 not a rule"},
		{"newer schema", `{"v":2,"channel":"trade","apps":["greeter"],"releasing":true,"blue_percent":0,"stages":[{"percent":0}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cli := etcdtest.Start(t).Client(t)
			ctx := context.Background()
			logs1 := newLogLines(t)
			blue1, _ := start(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color, c.Logger = deploy.Blue, logs1.logger() })
			start(t, cli, "green-1", func(c *lifecycle.Config) { c.Color = deploy.Green })
			ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ctl.Open(ctx, "trade", []string{"greeter"}); err != nil {
				t.Fatal(err)
			}
			if _, err := ctl.Shift(ctx, "trade", 0); err != nil { // blue drained
				t.Fatal(err)
			}
			waitRecord(t, cli, "blue-1", "trade", 0)
			waitRecord(t, cli, "green-1", "trade", 100)
			client := dial(t, cli)
			// A consumer whose first ready endpoint is the drained one may call it until green-1
			// connects (issue 12, case 7, the balancer's); from then on green-1 takes every call.
			testutil.Eventually(t, "the consumer calling green-1", func() bool {
				id, err := call(client, true)
				if err != nil {
					t.Fatal(err)
				}
				return id == "green-1"
			})

			// The rule becomes unreadable while blue-1 runs: it keeps its last good rule.
			key := deploy.ChannelKey(deploy.DefaultPrefix, "trade")
			if _, err := cli.Put(ctx, key, tc.bad); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, "blue-1's rule client skipping the unreadable rule", func() bool {
				return logs1.has("skipping malformed rule", key)
			})
			if st := blue1.Status(); st.State != lifecycle.StateServing || !st.Ready || st.Channel != "trade" || st.TrafficWeight != 0 {
				t.Fatalf("a running instance did not keep its last good rule: %+v", st)
			}
			if in, ok := record(t, cli, "blue-1"); !ok || in.Channel != "trade" || in.TrafficWeight != 0 {
				t.Fatalf("blue-1's record after the rule became unreadable: %+v (registered %v), want channel trade, traffic weight 0", in, ok)
			}

			// blue is restarted as v2 while the rule cannot be read.
			if err := blue1.Offline(ctx); err != nil {
				t.Fatal(err)
			}
			logs2 := newLogLines(t)
			blue2, err := lifecycle.New(config(t, cli, "blue-2", func(c *lifecycle.Config) {
				c.Color, c.Version, c.Logger = deploy.Blue, "v2", logs2.logger()
			}))
			if err != nil {
				t.Fatal(err)
			}
			g2 := &greeter{id: "blue-2", release: make(chan struct{})}
			greeterpb.RegisterGreeterServer(blue2.Server(), g2)
			t.Cleanup(func() { _ = blue2.Offline(context.Background()) })
			started := make(chan error, 1)
			go func() { started <- blue2.Start(ctx) }()
			testutil.Eventually(t, "blue-2 refusing to register, or registering", func() bool {
				return logs2.has("not registering", key) || blue2.State() != lifecycle.StateStarting
			})
			// Calls made while blue-2 waits: none may reach it.
			const calls = 60
			onBlue2 := callsOn(t, client, calls, "blue-2")
			st := blue2.Status()
			in, registered := record(t, cli, "blue-2")
			if st.State != lifecycle.StateStarting || st.Ready || registered || onBlue2 != 0 {
				t.Fatalf("with blue drained and the rule unreadable, the restarted blue-2 is %s (ready %v), registered %v with channel %q traffic weight %v, and took %d of %d calls; want it starting, not ready, unregistered, 0 calls",
					st.State, st.Ready, registered, in.Channel, in.TrafficWeight, onBlue2, calls)
			}
			if c := httpGet(t, blue2, "/healthz/ready"); c != http.StatusServiceUnavailable {
				t.Fatalf("/healthz/ready of blue-2 while the rule is unreadable: %d, want 503", c)
			}
			if !strings.Contains(st.Blocked, key) {
				t.Fatalf("blue-2's status does not say what it waits for: %+v", st)
			}

			// The operator repairs the rule: blue-2 starts, drained.
			putRule(t, cli, "trade", []string{"greeter"}, true, 0)
			if err := testutil.Receive(t, "blue-2's Start", started); err != nil {
				t.Fatalf("Start after the rule was repaired: %v", err)
			}
			if st := blue2.Status(); st.State != lifecycle.StateServing || !st.Ready || st.Channel != "trade" || st.TrafficWeight != 0 || st.Blocked != "" {
				t.Fatalf("blue-2 after the repair: %+v, want serving, channel trade, traffic weight 0", st)
			}
			waitRecord(t, cli, "blue-2", "trade", 0)
			if n := logs2.count("not registering", key); n < 1 {
				t.Fatalf("blue-2 logged %d lines about the unreadable rule", n)
			}
		})
	}
}

// An instance whose StartTimeout passes while its channel's rule cannot be read fails Start
// with an error naming the key and what to do, and leaves nothing registered.
func TestUnreadableRuleFailsStartAtStartTimeout(t *testing.T) {
	t.Parallel() // it waits out its StartTimeout
	cli := etcdtest.Start(t).Client(t)
	key := deploy.ChannelKey(deploy.DefaultPrefix, "trade")
	if _, err := cli.Put(context.Background(), key, `{"v":2,"channel":"trade","apps":["greeter","pay"]}`); err != nil {
		t.Fatal(err)
	}
	inst, err := lifecycle.New(config(t, cli, "blue-1", func(c *lifecycle.Config) {
		c.Color, c.StartTimeout = deploy.Blue, 500*time.Millisecond
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	err = inst.Start(context.Background())
	t.Logf("Start: %v", err)
	if err == nil || !strings.HasPrefix(err.Error(), "lifecycle: ") || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "etcdctl put "+key) {
		t.Fatalf("Start with an unreadable rule until StartTimeout = %v; want a lifecycle error naming %s and what to do", err, key)
	}
	// The record it suggests is one this version reads.
	if _, example, ok := strings.Cut(err.Error(), "etcdctl put "+key+" '"); !ok || !strings.Contains(example, "'") {
		t.Fatalf("no example record in %v", err)
	} else if _, err := traffic.Unmarshal([]byte(example[:strings.Index(example, "'")])); err != nil {
		t.Fatalf("the suggested record does not decode: %v", err)
	}
	if _, ok := record(t, cli, "blue-1"); ok {
		t.Fatal("an instance that could not read its rule registered")
	}
	if s := inst.State(); s != lifecycle.StateStopped {
		t.Fatalf("state after the failed start: %s", s)
	}
}

// An unreadable rule that cannot concern the app does not hold up its start: one whose apps
// can be read and do not include it, and one that cannot be read at all while the app is in
// a readable open channel (an app is in at most one open channel).
func TestUnreadableRuleOfOtherAppsDoesNotBlockAStart(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, deploy.ChannelKey(deploy.DefaultPrefix, "pay"), `{"v":2,"channel":"pay","apps":["pay","wallet"]}`); err != nil {
		t.Fatal(err)
	}
	a, _ := start(t, cli, "a")
	if st := a.Status(); st.State != lifecycle.StateServing || st.TrafficWeight != 100 {
		t.Fatalf("a: %+v", st)
	}
	putRule(t, cli, "trade", []string{"greeter"}, true, 0)
	if _, err := cli.Put(ctx, deploy.ChannelKey(deploy.DefaultPrefix, "zzz"), "garbage"); err != nil {
		t.Fatal(err)
	}
	b, _ := start(t, cli, "b", func(c *lifecycle.Config) { c.Color = deploy.Blue })
	if st := b.Status(); st.State != lifecycle.StateServing || st.Channel != "trade" || st.TrafficWeight != 0 {
		t.Fatalf("b: %+v, want serving drained in trade", st)
	}
}
