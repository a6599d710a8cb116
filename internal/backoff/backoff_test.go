package backoff_test

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/backoff"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestGrowsCapsAndResets(t *testing.T) {
	b := backoff.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	within := func(d, want time.Duration) bool {
		return d >= want*8/10 && d <= want*12/10
	}
	for i, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		if d := b.Next(); !within(d, want) {
			t.Fatalf("step %d: got %v, want %v ±20%%", i, d, want)
		}
	}
	b.Reset()
	if d := b.Next(); !within(d, 100*time.Millisecond) {
		t.Fatalf("after Reset: got %v, want 100ms ±20%%", d)
	}
}
