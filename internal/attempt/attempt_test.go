package attempt_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/attempt"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Unanswered attempts are made again within the call's time, each with its own deadline;
// then Do gives up saying what it tried. An answered error ends the step at once.
func TestDoRetriesUnansweredWithinTheCall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	k := attempt.Begin(ctx, 5*time.Second)
	defer k.Cancel()
	var deadlines []time.Duration
	err := k.Do(true, func(actx context.Context) error {
		d, _ := actx.Deadline()
		deadlines = append(deadlines, time.Until(d))
		return context.DeadlineExceeded // as an attempt that etcd did not answer
	})
	var gu *attempt.GaveUp
	if !errors.As(err, &gu) || !gu.Sent || gu.Attempts != len(deadlines) || len(deadlines) < 2 ||
		!errors.Is(err, kvwatch.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(gu.Tried(), "attempts in ") {
		t.Fatalf("Do of unanswered attempts: %v after %d attempts; want a GaveUp (sent) after several", err, len(deadlines))
	}
	for _, d := range deadlines {
		if d > 450*time.Millisecond {
			t.Fatalf("an attempt had %v: want the call's time (400ms) at most", d)
		}
	}
	refused := errors.New("etcdserver: key not found")
	k2 := attempt.Begin(context.Background(), time.Second)
	defer k2.Cancel()
	n := 0
	if err := k2.Do(false, func(context.Context) error { n++; return refused }); err != refused || n != 1 {
		t.Fatalf("an answered error: %v after %d attempts; want it at once", err, n)
	}
}
