package traffic_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newClient(t testing.TB, cli *clientv3.Client) *traffic.Rules {
	t.Helper()
	return newClientLogging(t, cli, testutil.Logger(t))
}

// newClientLogging is newClient with the rule client's own logger.
func newClientLogging(t testing.TB, cli *clientv3.Client, log *slog.Logger) *traffic.Rules {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	c, err := traffic.NewRules(ctx, traffic.Config{Client: cli, Logger: log, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newController(t testing.TB, cli *clientv3.Client) *traffic.Controller {
	t.Helper()
	ctl, err := traffic.NewController(traffic.Config{Client: cli, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ctl
}

// eventLog records events as "channel Kind[ old→new]" strings.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(e traffic.Event) {
	l.mu.Lock()
	l.events = append(l.events, e.String())
	l.mu.Unlock()
}

func (l *eventLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

// waitFor waits until the log is exactly want.
func (l *eventLog) waitFor(t testing.TB, want ...string) {
	t.Helper()
	w := strings.Join(want, "\n")
	if err := testutil.Poll(context.Background(), testutil.Deadline, func() bool { return strings.Join(l.get(), "\n") == w }); err != nil {
		t.Fatalf("%v; events:\n%s\nwant:\n%s", err, strings.Join(l.get(), "\n"), w)
	}
}

func TestAReleaseProducesItsEventsInOrder(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	c := newClient(t, cli)
	ctl := newController(t, cli)
	var trade, all eventLog
	defer c.Subscribe("trade", trade.add)()
	defer c.Subscribe("", all.add)()
	ctx := context.Background()

	steps := []func() (traffic.Rule, error){
		func() (traffic.Rule, error) { return ctl.Open(ctx, "trade", []string{"order", "inventory"}) },
		func() (traffic.Rule, error) { return ctl.Shift(ctx, "trade", 0) },
		func() (traffic.Rule, error) { return ctl.Shift(ctx, "trade", 1) },
		func() (traffic.Rule, error) { return ctl.Shift(ctx, "trade", 50) },
		func() (traffic.Rule, error) { return ctl.Shift(ctx, "trade", 100) },
		func() (traffic.Rule, error) { return ctl.Finish(ctx, "trade") },
		func() (traffic.Rule, error) { return ctl.Open(ctx, "pay", []string{"pay"}) },
	}
	for i, step := range steps {
		if _, err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	want := []string{
		"trade OnStart",
		"trade OnFlowChange 50→0", "trade OnEnterAllGreen",
		"trade OnFlowChange 0→1", "trade OnExitAllGreen",
		"trade OnFlowChange 1→50",
		"trade OnFlowChange 50→100", "trade OnEnterAllBlue",
		"trade OnFlowChange 100→50", "trade OnExitAllBlue", "trade OnFinish",
	}
	trade.waitFor(t, want...)
	all.waitFor(t, append(want, "pay OnStart")...)

	if r, ok := c.Rule("trade"); !ok || r.Releasing || r.BluePercent != 50 {
		t.Fatalf("Rule(trade) = %+v %v", r, ok)
	}
	if _, ok := c.ChannelOf("order"); ok {
		t.Fatal("order is in no open channel after Finish")
	}
	if r, ok := c.ChannelOf("pay"); !ok || r.Channel != "pay" {
		t.Fatalf("ChannelOf(pay) = %+v %v", r, ok)
	}
}

func TestLateSubscriberAndNewClientReplayTheCurrentState(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctl := newController(t, cli)
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 0); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, cli) // starts with blue drained
	var l eventLog
	defer c.Subscribe("trade", l.add)()
	l.waitFor(t, "trade OnStart", "trade OnFlowChange 50→0", "trade OnEnterAllGreen")
}

func TestSlowAndPanickingSubscribersDoNotHoldUpOthers(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	c := newClient(t, cli)
	ctl := newController(t, cli)
	stuck := make(chan struct{})
	defer close(stuck)
	defer c.Subscribe("trade", func(traffic.Event) { <-stuck })()
	defer c.Subscribe("trade", func(traffic.Event) { panic("handler bug") })()
	var l eventLog
	defer c.Subscribe("trade", l.add)()
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 0); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "trade OnStart", "trade OnFlowChange 50→0", "trade OnEnterAllGreen")
	if r, ok := c.ChannelOf("order"); !ok || r.BluePercent != 0 {
		t.Fatalf("reads are held up behind a stuck subscriber: %+v", r)
	}
}

// openedThroughProxy returns a rule client reaching etcd through the cuttable proxy, a
// controller that bypasses it, channel trade opened, the client's trade events so far, and
// what the client logged.
func openedThroughProxy(t *testing.T) (*etcdtest.Server, *traffic.Rules, *traffic.Controller, *eventLog, *logRecorder) {
	t.Helper()
	e := etcdtest.Start(t)
	logs := newLogRecorder()
	c := newClientLogging(t, e.Client(t), slog.New(logs))
	ctl := newController(t, e.DirectClient(t))
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	l := &eventLog{}
	t.Cleanup(c.Subscribe("trade", l.add))
	l.waitFor(t, "trade OnStart")
	return e, c, ctl, l, logs
}

func TestEventsConvergeAfterAWatchGapWithCompaction(t *testing.T) {
	e, c, ctl, l, logs := openedThroughProxy(t)
	ctx := context.Background()

	// Cut off, the client misses 0 → 1 → 100 and a compaction; it must report the net change.
	e.Cut()
	for _, p := range []float64{0, 1, 100} {
		if _, err := ctl.Shift(ctx, "trade", p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := c.Rule("trade"); r.BluePercent != 50 {
		t.Fatalf("cut-off client changed its rule to %v", r.BluePercent)
	}
	e.Heal()
	// Exactly the net change: had the client seen any of the steps, its events would say so.
	l.waitFor(t, "trade OnStart", "trade OnFlowChange 50→100", "trade OnEnterAllBlue")
	// And it got there by listing again because its watch's revision was compacted.
	if !logs.has("watch ended; listing again", "compacted") {
		t.Fatalf("the client did not report a compacted watch; it logged:\n%s", logs)
	}
}

func TestMalformedRuleIsSkippedAndTheLastGoodKept(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	c := newClient(t, cli)
	ctl := newController(t, cli)
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 0); err != nil {
		t.Fatal(err)
	}
	var l eventLog
	defer c.Subscribe("trade", l.add)()
	l.waitFor(t, "trade OnStart", "trade OnFlowChange 50→0", "trade OnEnterAllGreen")

	for _, bad := range []string{`{"v":1,"channel":"trade","apps":["order"],"releasing":true,"blue_percent":150}`, `nonsense`} {
		if _, err := cli.Put(ctx, "/switchyard/channels/trade", bad); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "/switchyard/channels/other", `{"v":1,"channel":"trade","apps":["x"],"releasing":true,"blue_percent":1}`); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "three malformed records skipped", func() bool { return c.Skipped() >= 3 })
	if r, ok := c.Rule("trade"); !ok || r.BluePercent != 0 || !r.Releasing {
		t.Fatalf("last good rule not kept: %+v", r)
	}
	if _, ok := c.Rule("other"); ok {
		t.Fatal("a rule stored under the wrong channel was accepted")
	}
	// The controller refuses to act on what it cannot read, and says where.
	if _, err := ctl.Shift(ctx, "trade", 10); err == nil || !strings.Contains(err.Error(), "/switchyard/channels/") {
		t.Fatalf("Shift over a malformed rule = %v, want an error naming the key", err)
	}
	// A good rule written after the malformed ones is the barrier: the subscriber gets events
	// in etcd's order, so once the good rule's events are in, any event of a malformed one
	// would be in the log before them.
	if _, err := cli.Put(ctx, "/switchyard/channels/trade", `{"v":1,"channel":"trade","apps":["order"],"releasing":true,"blue_percent":5}`); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "trade OnStart", "trade OnFlowChange 50→0", "trade OnEnterAllGreen",
		"trade OnFlowChange 0→5", "trade OnExitAllGreen")
}

func TestNewClientWithoutEtcdFailsClearly(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	e.Stop()
	_, err := traffic.NewRules(context.Background(), traffic.Config{Client: cli, Logger: testutil.Logger(t), RequestTimeout: 300 * time.Millisecond})
	if !errors.Is(err, traffic.ErrEtcdUnavailable) || !strings.HasPrefix(err.Error(), "traffic: load rules:") {
		t.Fatalf("NewClient without etcd = %v, want a traffic error wrapping ErrEtcdUnavailable", err)
	}
}

func TestControllerRefusals(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctl := newController(t, cli)
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"shift unknown", func() error { _, err := ctl.Shift(ctx, "nope", 10); return err }, traffic.ErrUnknownChannel},
		{"finish unknown", func() error { _, err := ctl.Finish(ctx, "nope"); return err }, traffic.ErrUnknownChannel},
		{"open twice", func() error { _, err := ctl.Open(ctx, "trade", []string{"order"}); return err }, traffic.ErrAlreadyOpen},
		{"app in another open channel", func() error { _, err := ctl.Open(ctx, "trade2", []string{"pay", "inventory"}); return err }, traffic.ErrAppInOpenChannel},
		{"percent out of range", func() error { _, err := ctl.Shift(ctx, "trade", 100.5); return err }, traffic.ErrInvalidRule},
		{"NaN", func() error { _, err := ctl.Shift(ctx, "trade", nan()); return err }, traffic.ErrInvalidRule},
		{"bad channel name", func() error { _, err := ctl.Open(ctx, "a b", []string{"x"}); return err }, traffic.ErrInvalidRule},
		{"no apps", func() error { _, err := ctl.Open(ctx, "empty", nil); return err }, traffic.ErrInvalidRule},
		{"get unknown", func() error { _, err := ctl.Get(ctx, "nope"); return err }, traffic.ErrUnknownChannel},
	}
	for _, c := range cases {
		if err := c.do(); !errors.Is(err, c.want) || !strings.HasPrefix(err.Error(), "traffic:") {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := ctl.Finish(ctx, "trade"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 10); !errors.Is(err, traffic.ErrNotOpen) {
		t.Errorf("shift a finished channel: %v, want ErrNotOpen", err)
	}
	// After finishing, the apps are free again, and the rule is back at 50 %.
	if _, err := ctl.Open(ctx, "trade2", []string{"inventory"}); err != nil {
		t.Fatalf("open with an app of a finished channel: %v", err)
	}
	rules, err := ctl.List(ctx)
	if err != nil || len(rules) != 2 || rules[0].Channel != "trade" || rules[0].BluePercent != 50 || rules[0].Releasing {
		t.Fatalf("List = %+v %v", rules, err)
	}
}

func nan() float64 { var z float64; return z / z }

func TestConcurrentOperatorsConflictInsteadOfOverwriting(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	// Many operators race to open channels that share an app: exactly one may win.
	const n = 8
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctl := newController(t, cli)
			_, err := ctl.Open(ctx, fmt.Sprintf("ch-%d", i), []string{"order"})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	wins := 0
	for err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, traffic.ErrConflict) || errors.Is(err, traffic.ErrAppInOpenChannel):
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d operators opened a channel with app order; exactly one may", wins)
	}
	rules, err := newController(t, cli).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open := 0
	for _, r := range rules {
		if r.Releasing && r.Has("order") {
			open++
		}
	}
	if open != 1 {
		t.Fatalf("%d open channels hold app order", open)
	}
}

func TestEveryChangeMissedDuringADisconnectIsReplayed(t *testing.T) {
	e, _, ctl, l, _ := openedThroughProxy(t)
	ctx := context.Background()
	// Without compaction etcd keeps the history, and the resumed watch delivers the missed
	// revisions, often in one response: each must still produce its own events.
	e.Cut()
	for _, p := range []float64{0, 1, 100, 0} {
		if _, err := ctl.Shift(ctx, "trade", p); err != nil {
			t.Fatal(err)
		}
	}
	e.Heal()
	l.waitFor(t, "trade OnStart",
		"trade OnFlowChange 50→0", "trade OnEnterAllGreen",
		"trade OnFlowChange 0→1", "trade OnExitAllGreen",
		"trade OnFlowChange 1→100", "trade OnEnterAllBlue",
		"trade OnFlowChange 100→0", "trade OnExitAllBlue", "trade OnEnterAllGreen")
}

// A rule key that exists but cannot be read is reported, with the apps it may name, until it
// is repaired or deleted; one read before keeps its last good rule and does not hold up the
// apps it names. Updated is closed at each change.
func TestUnreadableRulesAreReportedUntilRepairedOrDeleted(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	put := func(channel, val string) {
		t.Helper()
		if _, err := cli.Put(ctx, "/switchyard/channels/"+channel, val); err != nil {
			t.Fatal(err)
		}
	}
	good := func(channel string, releasing bool, apps ...string) string {
		r, err := traffic.NewRule(channel, apps, releasing, 0)
		if err != nil {
			t.Fatal(err)
		}
		b, err := traffic.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	put("trade", good("trade", true, "order"))
	put("pay", `{"v":2,"channel":"pay","apps":["wallet","pay"],"releasing":true,"blue_percent":0}`)
	put("junk", "\x00garbage")
	c := newClient(t, cli)
	show := func(us []traffic.Unreadable) string {
		s := make([]string, len(us))
		for k, u := range us {
			s[k] = fmt.Sprintf("%s%v last_good=%v", u.Channel, u.Apps, u.LastGood)
			if !errors.Is(u.Err, traffic.ErrMalformedRule) || u.Key != "/switchyard/channels/"+u.Channel {
				t.Fatalf("unreadable %+v: want its key and an error wrapping ErrMalformedRule", u)
			}
		}
		return strings.Join(s, ", ")
	}
	check := func(app, want string) {
		t.Helper()
		if got := show(c.UnreadableFor(app)); got != want {
			t.Fatalf("UnreadableFor(%q) = %q, want %q", app, got, want)
		}
	}
	if got, want := show(c.Unreadable()), "junk[] last_good=false, pay[pay wallet] last_good=false"; got != want {
		t.Fatalf("Unreadable() = %q, want %q", got, want)
	}
	check("pay", "junk[] last_good=false, pay[pay wallet] last_good=false")
	check("billing", "junk[] last_good=false") // junk may name any app
	check("order", "")                         // order is in trade, open and readable
	if _, ok := c.Rule("pay"); ok {
		t.Fatal("an unreadable rule is in force")
	}

	// trade becomes unreadable: its last good rule stays and holds no one up.
	updated := c.Updated()
	put("trade", `{"v":2,"channel":"trade","apps":["order"]}`)
	testutil.Eventually(t, "Updated closed by the unreadable trade", func() bool {
		select {
		case <-updated:
			return true
		default:
			return false
		}
	})
	if r, ok := c.ChannelOf("order"); !ok || r.Channel != "trade" {
		t.Fatalf("order lost its last good rule: %+v %v", r, ok)
	}
	check("order", "")
	if got, want := show(c.Unreadable()), "junk[] last_good=false, pay[pay wallet] last_good=false, trade[order] last_good=true"; got != want {
		t.Fatalf("Unreadable() = %q, want %q", got, want)
	}

	// Repairs and deletions clear them, through the watch and through a re-list alike.
	put("pay", good("pay", false, "pay", "wallet"))
	if _, err := cli.Delete(ctx, "/switchyard/channels/junk"); err != nil {
		t.Fatal(err)
	}
	put("trade", good("trade", true, "order"))
	testutil.Eventually(t, "every key readable", func() bool { return len(c.Unreadable()) == 0 })
	check("billing", "")
	if c2 := newClient(t, cli); len(c2.Unreadable()) != 0 {
		t.Fatalf("a new client lists %s", show(c2.Unreadable()))
	}
}
