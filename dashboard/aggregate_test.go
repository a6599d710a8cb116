package dashboard_test

import (
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
	"github.com/switchyard-go/switchyard/window"
)

// stats is a /stats answer in lifecycle state state with requests (none failed) recorded in
// the second before now.
func stats(now time.Time, state string, requests int) *window.Stats {
	w := window.New(func() time.Time { return now.Add(-time.Second) })
	for range requests {
		w.Request(time.Millisecond, false)
	}
	snap := w.Snapshot()
	snap.Now = now.Unix()
	return &window.Stats{State: state, InFlight: 1, Window: snap}
}

func rec(app, id string, c deploy.Color) registry.Record {
	return registry.Record{App: app, ID: id, Color: c, Addr: "10.0.0.1:9000", Admin: "10.0.0.1:9001"}
}

// Each instance gets one state, in order of precedence: no answer, offline, drained,
// warming, ready; the colors count them.
func TestAggregateStates(t *testing.T) {
	now := time.Unix(2_000_000, 0)
	rule, err := traffic.NewRule("trade", []string{"order"}, true, 100) // green drained
	if err != nil {
		t.Fatal(err)
	}
	warming := rec("order", "b-warming", deploy.Blue)
	warming.StartTime, warming.Warmup = now.Add(-time.Second), 30*time.Second
	warm := rec("order", "b-warm", deploy.Blue)
	warm.StartTime, warm.Warmup = now.Add(-time.Minute), 30*time.Second
	ch := dashboard.Aggregate(now, rule, []dashboard.Sample{
		{Record: warming, Stats: stats(now, "serving", 10)},
		{Record: warm, Stats: stats(now, "serving", 10)},
		{Record: rec("order", "b-draining", deploy.Blue), Stats: stats(now, "draining", 0)},
		{Record: rec("order", "g-1", deploy.Green), Stats: stats(now, "serving", 0)},
		{Record: rec("order", "g-2", deploy.Green), Stats: stats(now, "drained", 0)},
		{Record: rec("order", "g-3", deploy.Green), Err: "connection refused"},
		{Record: rec("order", "plain", deploy.None), Stats: stats(now, "serving", 5)},
		{Record: rec("other", "x", deploy.Blue), Stats: stats(now, "serving", 99)}, // not in the channel
	})
	if len(ch.Apps) != 1 {
		t.Fatalf("apps %+v", ch.Apps)
	}
	a := ch.Apps[0]
	want := map[string]string{"b-warming": dashboard.StateWarming, "b-warm": dashboard.StateReady, "b-draining": dashboard.StateOffline,
		"g-1": dashboard.StateDrained, "g-2": dashboard.StateOffline, "g-3": dashboard.StateNoAnswer, "plain": dashboard.StateReady}
	if len(a.Instances) != len(want) {
		t.Fatalf("instances %+v", a.Instances)
	}
	for _, in := range a.Instances {
		if in.State != want[in.ID] {
			t.Errorf("%s: state %q, want %q", in.ID, in.State, want[in.ID])
		}
	}
	if len(a.Colors) != 3 || a.Colors[2].Color != "none" || a.Colors[2].TargetPercent != nil || a.Colors[2].RPS != 0.5 {
		t.Fatalf("colors %+v; want blue, green and none (0.5 req/s, no target)", a.Colors)
	}
	blue, green := a.Colors[0], a.Colors[1]
	if blue.States != (dashboard.States{Ready: 1, Warming: 1, Offline: 1}) || blue.Drained || blue.InFlight != 3 {
		t.Errorf("blue %+v", blue)
	}
	if green.States != (dashboard.States{Offline: 1, Drained: 1, NoAnswer: 1}) || !green.Drained || *green.TargetPercent != 0 {
		t.Errorf("green %+v", green)
	}
	if a.ObservedBlue == nil || *a.ObservedBlue != 100 || a.TargetBlue != 100 {
		t.Errorf("split: observed %v target %v; want 100/100", a.ObservedBlue, a.TargetBlue)
	}
	// Blue's two serving instances take 10 req each: 100 % load each; the draining one 0 %.
	for _, in := range a.Instances[:3] {
		if wantLoad := map[bool]float64{true: 0, false: 100}[in.ID == "b-draining"]; in.LoadPercent == nil || *in.LoadPercent != wantLoad || in.Hot {
			t.Errorf("%s: load %v hot %v, want %v", in.ID, in.LoadPercent, in.Hot, wantLoad)
		}
	}
	if g3 := a.Instances[5]; g3.ID != "g-3" || g3.NoAnswer != "connection refused" || g3.LoadPercent != nil {
		t.Errorf("g-3 %+v", g3)
	}
}

// Without requests there is no observed split and no percentile; a lone busy instance is
// not hot (it is its color's mean).
func TestAggregateQuietAndLone(t *testing.T) {
	now := time.Unix(2_000_000, 0)
	rule, _ := traffic.NewRule("trade", []string{"order", "stock"}, false, 0) // closed: 50/50
	ch := dashboard.Aggregate(now, rule, []dashboard.Sample{{Record: rec("order", "b", deploy.Blue), Stats: stats(now, "serving", 500)}})
	order, stock := ch.Apps[0], ch.Apps[1]
	if order.TargetBlue != 50 || ch.TargetBlue != 50 || ch.Releasing || order.Colors[0].Drained {
		t.Errorf("closed channel: %+v", ch)
	}
	if in := order.Instances[0]; *in.LoadPercent != 100 || in.Hot {
		t.Errorf("lone instance: %+v", in)
	}
	if stock.App != "stock" || stock.ObservedBlue != nil || len(stock.Colors) != 2 || stock.Colors[0].P99MS != nil || len(stock.Instances) != 0 {
		t.Errorf("an app with no instance: %+v", stock)
	}
	// The second in progress is not counted: a request in it shows in the next poll.
	w := window.New(func() time.Time { return now })
	w.Request(time.Millisecond, false)
	ch = dashboard.Aggregate(now, rule, []dashboard.Sample{{Record: rec("order", "b", deploy.Blue), Stats: &window.Stats{State: "serving", Window: w.Snapshot()}}})
	if r := ch.Apps[0].Colors[0].Requests; r != 0 {
		t.Errorf("a request of the current second counted: %d", r)
	}
}
