package dashboard_test

import (
	"fmt"
	"time"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
	"github.com/switchyard-go/switchyard/window"
)

// Aggregate builds a channel's view from what each instance's /stats said: here two blue
// instances (one carrying most of blue's load), a green one with failures, and a green one
// that did not answer, during a release at 30 % blue.
func ExampleAggregate() {
	now := time.Unix(1_000_000, 0)
	stats := func(requests, failed int, d time.Duration) *window.Stats {
		w := window.New(func() time.Time { return now.Add(-time.Second) }) // a complete second
		for k := range requests {
			w.Request(d, k < failed)
		}
		return &window.Stats{State: "serving", Window: window.Merge(w.Snapshot(), window.Snapshot{Now: now.Unix()})}
	}
	rec := func(id string, c deploy.Color) registry.Record {
		return registry.Record{App: "order", ID: id, Color: c, Addr: "10.0.0.1:9000", Admin: "10.0.0.1:9001"}
	}
	rule, _ := traffic.NewRule("trade", []string{"order"}, true, 30)
	ch := dashboard.Aggregate(now, rule, []dashboard.Sample{
		{Record: rec("blue-1", deploy.Blue), Stats: stats(240, 0, 3*time.Millisecond)},
		{Record: rec("blue-2", deploy.Blue), Stats: stats(60, 0, 3*time.Millisecond)},
		{Record: rec("green-1", deploy.Green), Stats: stats(700, 70, 8*time.Millisecond)},
		{Record: rec("green-2", deploy.Green), Err: "timed out after 800ms"},
	})
	app := ch.Apps[0]
	fmt.Printf("%s: target blue %.0f%%, observed %.0f%%\n", app.App, app.TargetBlue, *app.ObservedBlue)
	for _, c := range app.Colors {
		fmt.Printf("%s: %.0f req/s, %.0f%% errors, p50 %.1f ms, %d ready, %d not answering\n",
			c.Color, c.RPS, c.ErrorPercent, *c.P50MS, c.States.Ready, c.States.NoAnswer)
	}
	for _, in := range app.Instances {
		if in.State == dashboard.StateNoAnswer {
			fmt.Printf("%s: no answer: %s\n", in.ID, in.NoAnswer)
			continue
		}
		fmt.Printf("%s: load %.0f%% hot=%v\n", in.ID, *in.LoadPercent, in.Hot)
	}
	// Output:
	// order: target blue 30%, observed 30%
	// blue: 30 req/s, 0% errors, p50 3.5 ms, 2 ready, 0 not answering
	// green: 70 req/s, 10% errors, p50 7.5 ms, 1 ready, 1 not answering
	// blue-1: load 160% hot=true
	// blue-2: load 40% hot=false
	// green-1: load 100% hot=false
	// green-2: no answer: timed out after 800ms
}
