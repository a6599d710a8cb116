package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReleaseIsLossless runs the whole release with short phases: run reports success only
// if no request failed and no v2 order met a v1 inventory.
func TestReleaseIsLossless(t *testing.T) {
	var out strings.Builder
	ok, err := run(&out, 400*time.Millisecond, 4) // short phases, 4 callers
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
	failed, total, err := runNaive(&out, 400*time.Millisecond, 4)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("naive: %d of %d requests failed", failed, total)
	if failed == 0 {
		t.Fatal("the naive rolling restart lost no request; the demo's comparison would be empty")
	}
}
