package job_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/job"
)

// workDrains are manual drains that are told of work, as lifecycle's Instance is.
type workDrains struct {
	*deploy.ManualDrains
	mu   sync.Mutex
	work map[string]int // "job ok", "job failed", "message ok", …
}

func (d *workDrains) DidWork(kind deploy.WorkKind, failed bool) {
	k := map[deploy.WorkKind]string{deploy.MessageWork: "message", deploy.JobWork: "job"}[kind]
	if failed {
		k += " failed"
	} else {
		k += " ok"
	}
	d.mu.Lock()
	d.work[k]++
	d.mu.Unlock()
}

func (d *workDrains) done() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.work)
}

// counts collects the int64 sum metric name from reader: its value per data point, keyed by
// the point's attributes (k=v, in key order, joined by spaces).
func counts(t *testing.T, reader *sdkmetric.ManualReader, name string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				var vals []string
				for _, kv := range dp.Attributes.ToSlice() {
					vals = append(vals, string(kv.Key)+"="+kv.Value.Emit())
				}
				out[strings.Join(vals, " ")] += dp.Value
			}
		}
	}
	return out
}

// Executors count, on Config.MeterProvider, the runs their handler finished by the executor's
// color and outcome, and tell their Drains of each, as they are a deploy.Worker.
func TestRunsCountedAndReportedToTheDrains(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	v := newEnv(t)
	workers := map[string]*workDrains{}
	v.tweak = func(cfg *job.Config) {
		wd := &workDrains{ManualDrains: cfg.Drains.(*deploy.ManualDrains), work: map[string]int{}}
		workers[cfg.ID] = wd
		cfg.Drains, cfg.MeterProvider = wd, mp
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
		want["switchyard.color="+string(colorOf(c.executor))+" switchyard.job=settle switchyard.outcome="+outcome] += int64(n)
		wantWork[c.executor][work] += n
	}
	v.mu.Unlock()
	if len(want) != 4 {
		t.Fatalf("runs %v: want runs of both outcomes on both colors", want)
	}
	// A run is counted as its handler returns, after the handler counted the call.
	testutil.EventuallyNoError(t, "every run counted and reported", func() error {
		if got := counts(t, reader, "switchyard.job.runs"); !maps.Equal(got, want) {
			return fmt.Errorf("switchyard.job.runs = %v\nwant %v", got, want)
		}
		for id, w := range workers {
			if got := w.done(); !maps.Equal(got, wantWork[id]) {
				return fmt.Errorf("%s's drains were told of %v, want %v", id, got, wantWork[id])
			}
		}
		return nil
	})
	// Nothing more: the schedules wait for the next trigger, which the test does not fire.
	if got := counts(t, reader, "switchyard.job.runs"); !maps.Equal(got, want) {
		t.Fatalf("switchyard.job.runs = %v after every run was counted, want %v", got, want)
	}
}
