package main

import (
	"context"
	"encoding/json"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

// startTestSystem brings the demo's system up at v1 (v2 inventory failing badV2 of its calls,
// order's leaky client when leaky is not nil) with its dashboard of channel trade polling
// every poll on a free loopback port; both stop at cleanup.
func startTestSystem(t *testing.T, badV2 float64, leaky *atomic.Bool, poll time.Duration) (*system, *watch) {
	t.Helper()
	sys, err := startSystem(context.Background(), badV2, leaky)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.close)
	w, err := startDashboard(sys.cli, "127.0.0.1:0", sys.log, poll)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.close(); err != nil {
			t.Error("the dashboard:", err)
		}
	})
	return sys, w
}

// step performs a release step and waits until it has taken effect where the demo's verdict
// looks (demo.afterStep): every instance's components see what the rule drains.
func (s *system) step(t *testing.T, name string, do func(context.Context) error, drained string) {
	t.Helper()
	ctx := context.Background()
	if err := do(ctx); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := s.afterStep(ctx, drained); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func (s *system) shift(p float64) func(context.Context) error {
	return func(ctx context.Context) error { _, err := s.ctl.Shift(ctx, "trade", p); return err }
}

func (s *system) open(ctx context.Context) error {
	_, err := s.ctl.Open(ctx, "trade", []string{"order", "inventory"})
	return err
}

// waitView waits until a View of the dashboard satisfies cond and returns it; it fails t with
// the last View's figures after testutil.Deadline.
func waitView(t *testing.T, w *watch, what string, cond func(dashboard.View) bool) dashboard.View {
	t.Helper()
	deadline := time.After(testutil.Deadline)
	for {
		next := w.dash.Updated()
		v := w.dash.Snapshot()
		if len(v.Channels) == 1 && cond(v) {
			return v
		}
		select {
		case <-next:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for the dashboard to show %s; it showed %s", testutil.Deadline, what, figures(v))
		}
	}
}

// figures is a View's per-color figures, compactly, for logs and failures.
func figures(v dashboard.View) string {
	type color struct {
		Color     string
		Requests  uint64
		Errors    uint64
		Crossings float64 // count in the span
		States    dashboard.States
	}
	type app struct {
		App            string
		Target         float64
		Observed       *float64
		Colors         []color
		Instances      []string
		InstanceStates []string
	}
	var out []app
	for _, ch := range v.Channels {
		for _, a := range ch.Apps {
			x := app{App: a.App, Target: a.TargetBlue, Observed: a.ObservedBlue}
			for _, c := range a.Colors {
				x.Colors = append(x.Colors, color{c.Color, c.Requests, c.Errors, crossings(v, c), c.States})
			}
			for _, i := range a.Instances {
				x.Instances = append(x.Instances, i.ID)
				x.InstanceStates = append(x.InstanceStates, i.State)
			}
			out = append(out, x)
		}
	}
	js, _ := json.Marshal(out)
	return string(js)
}

// crossings is a color's crossings in the view's span (the View gives them per second).
func crossings(v dashboard.View, c dashboard.Color) float64 {
	return math.Round(c.CrossingsPS * float64(v.SpanS))
}

func appOf(t *testing.T, v dashboard.View, app string) dashboard.App {
	t.Helper()
	for _, a := range v.Channels[0].Apps {
		if a.App == app {
			return a
		}
	}
	t.Fatalf("no app %s in the view: %s", app, figures(v))
	return dashboard.App{}
}

func colorOf(a dashboard.App, color string) dashboard.Color {
	for _, c := range a.Colors {
		if c.Color == color {
			return c
		}
	}
	return dashboard.Color{}
}

// A release of the demo's system, shortened (open, drain blue, restart blue as v2 whose
// inventory fails a quarter of its calls, shift to 30 %), under load through the gateway, as
// the dashboard's View shows it: the observed split within 5 points of the target; the
// errors on blue, at inventory (which fails them) and at order (which passes them on), a
// quarter of blue's requests, none on green; no crossing while every hop honours the
// decisions. Then order's calls go through a plain round_robin client that forwards the
// baggage but ignores the decision: requests decided blue reach the green inventory and the
// other way round, and the View counts each as a crossing on the instance that got it —
// green's count equals the demo's own count of v2 order calls that reached v1 inventory.
func TestTheDashboardSeesARelease(t *testing.T) {
	leaky := new(atomic.Bool)
	sys, w := startTestSystem(t, 0.25, leaky, 100*time.Millisecond)
	ctx := context.Background()
	sys.step(t, "open", sys.open, "")
	sys.step(t, "drain blue", sys.shift(0), "blue")
	sys.step(t, "restart blue as v2", func(ctx context.Context) error { return sys.restart(ctx, "blue") }, "blue")
	sys.step(t, "shift to 30 %", sys.shift(30), "")
	// The load begins once blue's new instances are past their warmup (the balancer ramps a
	// warming instance's weight up) and the dashboard follows the 30 %.
	waitView(t, w, "30 % with both colors ready at order and inventory", func(v dashboard.View) bool {
		for _, a := range v.Channels[0].Apps {
			if a.TargetBlue != 30 || colorOf(a, "blue").States.Ready != 1 || colorOf(a, "green").States.Ready != 1 {
				return false
			}
		}
		return len(v.Channels[0].Apps) == 2
	})

	l := startLoad(ctx, sys.gateway, 4)
	v := waitView(t, w, "1000 requests at order and at inventory", func(v dashboard.View) bool {
		for _, a := range v.Channels[0].Apps {
			if colorOf(a, "blue").Requests+colorOf(a, "green").Requests < 1000 {
				return false
			}
		}
		return true
	})
	l.close()
	t.Logf("at 30 %%, blue v2 failing 25 %%: %s", figures(v))
	for _, app := range []string{"order", "inventory"} {
		a := appOf(t, v, app)
		blue, green := colorOf(a, "blue"), colorOf(a, "green")
		if a.ObservedBlue == nil || math.Abs(*a.ObservedBlue-30) > 5 {
			t.Errorf("%s: observed blue %v %%, want 30 %% ± 5 (blue %d, green %d requests)", app, a.ObservedBlue, blue.Requests, green.Requests)
		}
		if blue.Errors == 0 || math.Abs(blue.ErrorPercent-25) > 3 {
			t.Errorf("%s: blue errors %d of %d (%.1f %%), want a quarter: blue v2 inventory fails every fourth call", app, blue.Errors, blue.Requests, blue.ErrorPercent)
		}
		if green.Errors != 0 {
			t.Errorf("%s: green errors %d, want 0: green runs v1, which fails nothing", app, green.Errors)
		}
		if blue.CrossingsPS != 0 || green.CrossingsPS != 0 {
			t.Errorf("%s: crossings/s blue %v green %v while every hop honours the decisions", app, blue.CrossingsPS, green.CrossingsPS)
		}
		if blue.P99MS == nil || green.P99MS == nil || blue.RPS == 0 || green.RPS == 0 {
			t.Errorf("%s: rates and latency missing: blue %+v green %+v", app, blue, green)
		}
	}

	// Order's calls now ignore the decisions: the crossings land at inventory.
	leaky.Store(true)
	l = startLoad(ctx, sys.gateway, 4)
	waitView(t, w, "crossings on both colors of inventory", func(v dashboard.View) bool {
		inv := appOf(t, v, "inventory")
		return crossings(v, colorOf(inv, "blue")) >= 20 && crossings(v, colorOf(inv, "green")) >= 20
	})
	l.close()
	crossed := float64(sys.crossed.Load()) // final: the load has stopped
	v = waitView(t, w, "inventory green's crossings equal to the v2 order calls that reached v1 inventory", func(v dashboard.View) bool {
		return crossings(v, colorOf(appOf(t, v, "inventory"), "green")) == crossed
	})
	t.Logf("order calling inventory through round_robin, the baggage forwarded: %s; v2 → v1 calls counted by the demo: %v", figures(v), crossed)
	order := appOf(t, v, "order")
	if c := colorOf(order, "blue").CrossingsPS + colorOf(order, "green").CrossingsPS; c != 0 {
		t.Errorf("order crossings/s %v: the gateway honours the decisions", c)
	}
	for _, i := range appOf(t, v, "inventory").Instances {
		if i.CrossingsPS == 0 {
			t.Errorf("inventory instance %s (%s) counted no crossing: round_robin sends it half of the other color's calls", i.ID, i.Color)
		}
	}
}
