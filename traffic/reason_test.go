package traffic_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

// A write's reason is stored with the rule and reaches every subscriber with its events; the
// next write without one clears it; a reason that is not a short printable sentence is refused
// before anything is written.
func TestAShiftCarriesItsReasonToSubscribers(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctl, rules := newController(t, cli), newClient(t, cli)
	var log eventLog
	defer rules.Subscribe("trade", log.add)()
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order"}, traffic.Reason("release v2 by ops")); err != nil {
		t.Fatal(err)
	}
	const why = "release step 2 (10 %): step 1 passed, blue 0.1 % errors over 2,114 requests"
	r, err := ctl.Shift(ctx, "trade", 10, traffic.Reason(why))
	if err != nil || r.Reason != why {
		t.Fatalf("Shift: %+v, %v", r, err)
	}
	testutil.Eventually(t, "the shift's event with its reason", func() bool {
		return strings.Contains(strings.Join(log.get(), "\n"), "trade OnFlowChange 50→10 ("+why+")")
	})
	if got, err := ctl.Get(ctx, "trade"); err != nil || got.Reason != why {
		t.Fatalf("stored rule %+v, %v; want reason %q", got, err, why)
	}
	if r, err := ctl.Shift(ctx, "trade", 20); err != nil || r.Reason != "" {
		t.Fatalf("a shift without a reason: %+v, %v; want the reason cleared", r, err)
	}
	for _, bad := range []string{strings.Repeat("x", traffic.MaxReasonLen+1), "two\nlines", "\xff"} {
		_, err := ctl.Shift(ctx, "trade", 30, traffic.Reason(bad))
		var re *traffic.RuleError
		if !errors.Is(err, traffic.ErrInvalidRule) || !errors.As(err, &re) || re.Field != "reason" {
			t.Errorf("reason %q: %v; want a RuleError on reason", bad[:min(len(bad), 10)], err)
		}
	}
	if got, _ := ctl.Get(ctx, "trade"); got.BluePercent != 20 {
		t.Fatalf("a refused reason changed the rule: %+v", got)
	}
}
