package job_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/metrictest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/job"
)

// Executors count, on Config.MeterProvider, the runs their handler finished by the executor's
// color and outcome, and tell their Drains of each, as they are a deploy.Worker.
func TestRunsCountedAndReportedToTheDrains(t *testing.T) {
	m := metrictest.New(t)
	v := newEnv(t)
	workers := map[string]*metrictest.WorkDrains{}
	v.tweak = func(cfg *job.Config) {
		wd := metrictest.WorkOn(cfg.Drains.(*deploy.ManualDrains))
		workers[cfg.ID] = wd
		cfg.Drains, cfg.MeterProvider = wd, m.MP
		handler := cfg.Job.Handler
		cfg.Job.Handler = func(ctx context.Context, item int) error {
			err := handler(ctx, item)
			if item == 0 || item == 3 {
				return errors.New("item refused")
			}
			return err
		}
	}
	v.running(long, "blue-1", "green-1")
	v.ran(v.trigger())

	// What the handlers were called with: per executor, the runs of items 0 and 3 fail.
	want := map[string]int64{}
	wantWork := map[string]map[string]int{"blue-1": {}, "green-1": {}}
	v.mu.Lock()
	for c, n := range v.calls {
		outcome, work := "ok", "job ok"
		if c.item == 0 || c.item == 3 {
			outcome, work = "error", "job failed"
		}
		want["switchyard.color="+string(colorOf(c.executor))+",switchyard.job=settle,switchyard.outcome="+outcome] += int64(n)
		wantWork[c.executor][work] += n
	}
	v.mu.Unlock()
	if len(want) != 4 {
		t.Fatalf("runs %v: want runs of both outcomes on both colors", want)
	}
	// A run is counted as its handler returns, after the handler counted the call.
	testutil.EventuallyNoError(t, "every run counted and reported", func() error {
		if got := m.Sums("switchyard.job.runs"); !maps.Equal(got, want) {
			return fmt.Errorf("switchyard.job.runs = %v\nwant %v", got, want)
		}
		for id, w := range workers {
			if got := w.Done(); !maps.Equal(got, wantWork[id]) {
				return fmt.Errorf("%s's drains were told of %v, want %v", id, got, wantWork[id])
			}
		}
		return nil
	})
	// Nothing more: the schedules wait for the next trigger, which the test does not fire.
	if got := m.Sums("switchyard.job.runs"); !maps.Equal(got, want) {
		t.Fatalf("switchyard.job.runs = %v after every run was counted, want %v", got, want)
	}
}
