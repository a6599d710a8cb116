// Package metrictest reads the OpenTelemetry metrics a test's code recorded, on a real SDK
// MeterProvider with a manual reader, and counts the work components report to their Drains.
// Shared by the tests of balancer, mq and job.
package metrictest

import (
	"context"
	"maps"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/switchyard-go/switchyard/deploy"
)

// Reader is an SDK MeterProvider with a manual reader, shut down when the test ends.
type Reader struct {
	t      testing.TB
	MP     *sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
}

// New returns a Reader for t.
func New(t testing.TB) *Reader {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return &Reader{t: t, MP: mp, reader: reader}
}

// Sums collects the int64 sum metric name: its value per data point, keyed by the point's
// attributes written k=v,k=v (sorted by key); a metric with no data point gives an empty map.
func (r *Reader) Sums(name string) map[string]int64 {
	r.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		r.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				out[Attrs(dp.Attributes)] += dp.Value
			}
		}
	}
	return out
}

// Attrs writes an attribute set as k=v,k=v, sorted by key.
func Attrs(s attribute.Set) string {
	parts := make([]string, 0, s.Len())
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	return strings.Join(parts, ",")
}

// WorkDrains are manual drains that are told of work, as lifecycle's Instance is.
type WorkDrains struct {
	*deploy.ManualDrains
	mu   sync.Mutex
	work map[string]int // "message ok", "message failed", "job ok", "job failed"
}

// NewWorkDrains returns WorkDrains for an instance of color, nothing drained.
func NewWorkDrains(color deploy.Color) *WorkDrains { return WorkOn(deploy.NewManualDrains(color)) }

// WorkOn returns WorkDrains over d: its drains are d's.
func WorkOn(d *deploy.ManualDrains) *WorkDrains {
	return &WorkDrains{ManualDrains: d, work: map[string]int{}}
}

// DidWork counts one piece of work.
func (d *WorkDrains) DidWork(kind deploy.WorkKind, failed bool) {
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

// Done returns the work counted so far, by "message ok", "job failed", ….
func (d *WorkDrains) Done() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.work)
}
