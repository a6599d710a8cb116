package metrictest_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/metrictest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSumsAndWork(t *testing.T) {
	r := metrictest.New(t)
	c, err := r.MP.Meter("t").Int64Counter("c")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 2, metric.WithAttributes(attribute.String("b", "2"), attribute.String("a", "1")))
	c.Add(context.Background(), 1, metric.WithAttributes(attribute.String("a", "1"), attribute.String("b", "2")))
	if got := r.Sums("c"); len(got) != 1 || got["a=1,b=2"] != 3 {
		t.Fatalf("Sums = %v, want a=1,b=2: 3", got)
	}
	if got := r.Sums("none"); len(got) != 0 {
		t.Fatalf("a metric never recorded: %v", got)
	}
	d := metrictest.NewWorkDrains(deploy.Green)
	d.DidWork(deploy.MessageWork, false)
	d.DidWork(deploy.JobWork, true)
	if got := d.Done(); got["message ok"] != 1 || got["job failed"] != 1 || len(got) != 2 || d.Color() != deploy.Green {
		t.Fatalf("work %v, color %s", got, d.Color())
	}
}
