package lifecycle_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/traffic"
)

// awaitDrain follows d as a component does — read, then wait for the next change — until it
// reports want.
func awaitDrain(t *testing.T, d deploy.Drains, want deploy.Drain) {
	t.Helper()
	for {
		now, changed := d.Drained()
		if now == want {
			return
		}
		awaitClosed(t, "the drains to change from "+drainString(now)+" towards "+drainString(want), changed)
	}
}

// awaitClosed waits for ch to close, for at most testutil.Deadline.
func awaitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	tm := time.NewTimer(testutil.Deadline)
	defer tm.Stop()
	select {
	case <-ch:
	case <-tm.C:
		t.Fatalf("timed out after %v waiting for %s", testutil.Deadline, what)
	}
}

func drainString(d deploy.Drain) string {
	var s []string
	if d.Blue {
		s = append(s, "blue")
	}
	if d.Green {
		s = append(s, "green")
	}
	if len(s) == 0 {
		return "nothing drained"
	}
	return strings.Join(s, "+") + " drained"
}

// The Instance tells its components what its app's channel rule drains: nothing before the
// rules load (and a channel that closes at the load), then blue at 0, green at 100, nothing
// once the release closes, each change closing the channel handed out before it.
func TestInstanceDrainsFollowTheRule(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	inst, err := lifecycle.New(config(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color = deploy.Blue }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	var d deploy.Drains = inst
	if d.Color() != deploy.Blue {
		t.Fatalf("Color %q", d.Color())
	}
	before, loaded := d.Drained()
	if before != (deploy.Drain{}) {
		t.Fatalf("before Start: %s", drainString(before))
	}
	select {
	case <-loaded:
		t.Fatal("the channel handed out before Start is closed before the rules loaded")
	default:
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	awaitClosed(t, "the channel handed out before Start to close at the rules' load", loaded)

	ctl, _ := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if _, err := ctl.Open(ctx, "trade", []string{"greeter"}); err != nil {
		t.Fatal(err)
	}
	awaitDrain(t, d, deploy.Drain{}) // open at 50
	for _, step := range []struct {
		percent float64
		want    deploy.Drain
	}{{0, deploy.Drain{Blue: true}}, {30, deploy.Drain{}}, {100, deploy.Drain{Green: true}}, {0, deploy.Drain{Blue: true}}} {
		_, changed := d.Drained()
		if _, err := ctl.Shift(ctx, "trade", step.percent); err != nil {
			t.Fatal(err)
		}
		awaitClosed(t, "the shift to "+drainString(step.want)+" to close the channel", changed)
		awaitDrain(t, d, step.want)
	}
	if _, err := ctl.Finish(ctx, "trade"); err != nil { // the release closes: nothing drained
		t.Fatal(err)
	}
	awaitDrain(t, d, deploy.Drain{})
}

// drainProbe is a component that looks at its Drains when it starts.
type drainProbe struct {
	d       deploy.Drains
	atStart chan deploy.Drain
}

func (p *drainProbe) Start(context.Context) error {
	d, _ := p.d.Drained()
	p.atStart <- d
	return nil
}

func (p *drainProbe) Stop(context.Context) error { return nil }

// A component appended before Start sees a drain that was stored before the instance started
// from its first look (it starts after the rules loaded).
func TestAppendedComponentSeesTheDrainAtStart(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	ctl, _ := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if _, err := ctl.Open(ctx, "trade", []string{"greeter"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 100); err != nil { // green drained
		t.Fatal(err)
	}
	inst, err := lifecycle.New(config(t, cli, "green-1", func(c *lifecycle.Config) { c.Color = deploy.Green }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	p := &drainProbe{d: inst, atStart: make(chan deploy.Drain, 1)}
	inst.Append(p)
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.Receive(t, "the component started", p.atStart); got != (deploy.Drain{Green: true}) {
		t.Fatalf("the component saw %s at its start; want green drained", drainString(got))
	}
}

func TestAppendAfterStartPanics(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	inst, _ := start(t, cli, "a")
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(r.(string), "before Start") {
			t.Fatalf("Append after Start: recovered %v; want a panic saying to append before Start", r)
		}
	}()
	inst.Append(&component{name: "late", j: &journal{}})
}
