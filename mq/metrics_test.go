package mq_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/mq"
)

// workDrains are manual drains that are told of work, as lifecycle's Instance is.
type workDrains struct {
	*deploy.ManualDrains
	mu   sync.Mutex
	work map[string]int // "message ok", "message failed", "job ok", …
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
// the point's attribute values in key order, joined by "/".
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

// A blue consumer counts, on ConsumerConfig.MeterProvider, the messages its handler ran by
// the message's color and outcome (not the green one it skipped), and tells its Drains of
// each one, as they are a deploy.Worker.
func TestMessagesCountedAndReportedToTheDrains(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	drains := &workDrains{ManualDrains: deploy.NewManualDrains(deploy.Blue), work: map[string]int{}}
	b := newMemBroker()
	var g got
	c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Drains: drains, Logger: silent, MeterProvider: mp,
		Handler: func(ctx context.Context, m mq.Message) error {
			if string(m.Value) == "fail" {
				return errors.New("refused")
			}
			return g.handler(ctx, m)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })

	publishAll(t, b) // b (blue), g (green), u (untagged), r (tagged red: the origin's)
	err = mq.NewProducer(b, deploy.Blue).Publish(context.Background(), "t", mq.Message{Value: []byte("fail")})
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("publishing the message the handler refuses: %v, want the handler's error (the in-memory broker delivers synchronously)", err)
	}
	if s := g.sorted(); s != "b r u" {
		t.Fatalf("blue handled %q, want \"b r u\"", s)
	}
	const of = "switchyard.color=blue switchyard.group=G switchyard.message_color="
	want := map[string]int64{
		of + "blue switchyard.outcome=ok":    1,
		of + "blue switchyard.outcome=error": 1,
		of + " switchyard.outcome=ok":        2,
	}
	if got := counts(t, reader, "switchyard.mq.messages"); !maps.Equal(got, want) {
		t.Errorf("switchyard.mq.messages = %v\nwant %v", got, want)
	}
	if got, want := drains.done(), map[string]int{"message ok": 3, "message failed": 1}; !maps.Equal(got, want) {
		t.Errorf("the drains were told of %v, want %v", got, want)
	}
}
