package traffic_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

// Traffic is what a resolver reads to weigh endpoints by the rule itself (registry.Rules):
// the open channel of an app and both color weights, following Open, Shift and Finish, each
// change announced by Updated.
func TestTrafficFollowsTheRule(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	rules, ctl := newClient(t, cli), newController(t, cli)
	ctx := context.Background()
	traffic := func(app string) string {
		ch, blue, green, ok := rules.Traffic(app)
		return fmt.Sprintf("%s %v %v %v", ch, blue, green, ok)
	}
	if got := traffic("order"); got != " 0 0 false" {
		t.Fatalf("Traffic(order) with no rule = %s", got)
	}
	for _, step := range []struct {
		do   func() error
		want string
	}{
		{func() error { _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); return err }, "trade 100 100 true"},
		{func() error { _, err := ctl.Shift(ctx, "trade", 1); return err }, fmt.Sprintf("trade %v 100 true", 100.0/99)},
		{func() error { _, err := ctl.Shift(ctx, "trade", 0); return err }, "trade 0 100 true"},
		{func() error { _, err := ctl.Shift(ctx, "trade", 80); return err }, "trade 100 25 true"},
		{func() error { _, err := ctl.Shift(ctx, "trade", 100); return err }, "trade 100 0 true"},
		{func() error { _, err := ctl.Finish(ctx, "trade"); return err }, " 0 0 false"},
	} {
		updated := rules.Updated()
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, "Updated closed after the rule changed", func() bool {
			select {
			case <-updated:
				return true
			default:
				return false
			}
		})
		testutil.Eventually(t, "Traffic(order) = "+step.want, func() bool { return traffic("order") == step.want })
		if got := traffic("inventory"); got != step.want {
			t.Fatalf("Traffic(inventory) = %s, Traffic(order) = %s: both are in trade", got, step.want)
		}
		if got := traffic("gateway"); got != " 0 0 false" {
			t.Fatalf("Traffic(gateway), in no channel, = %s", got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { rules.Traffic("order") }); n != 0 {
		t.Fatalf("Traffic allocates %v times", n)
	}
}
