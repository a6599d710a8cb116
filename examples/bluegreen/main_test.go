package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReleaseIsLossless runs the whole release with the shortest phases that still put load
// through each one (a phase's load begins once its step has taken effect): run reports
// success only if no request failed, no v2 order met a v1 inventory, and no MQ message or job
// run was handled on a drained color (judged from events, see the package doc).
func TestReleaseIsLossless(t *testing.T) {
	var out strings.Builder
	ok, err := run(&out, 150*time.Millisecond, 4) // short phases, 4 callers
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !ok || !strings.Contains(out.String(), "verdict: LOSSLESS") {
		t.Fatal("the release was not lossless")
	}
	if strings.Count(out.String(), "\n") < 12 {
		t.Fatal("the report is missing phases")
	}
}

// TestNaiveReleaseLosesRequests: the same release without switchyard fails requests (the
// comparison -naive prints would otherwise show nothing).
func TestNaiveReleaseLosesRequests(t *testing.T) {
	var out strings.Builder
	failed, total, err := runNaive(&out, 100*time.Millisecond, 4)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("naive: %d of %d requests failed", failed, total)
	if failed == 0 {
		t.Fatal("the naive rolling restart lost no request; the demo's comparison would be empty")
	}
}
