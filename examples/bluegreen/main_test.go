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
	ok, err := run(&out, options{phase: 150 * time.Millisecond, workers: 4}) // short phases, 4 callers
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

// TestKillCanaryLosesOnlyTheCallsInFlight runs -fault kill-canary with short phases: the blue
// (v2) inventory dies without cleanup at 10 %, and run reports success only if every failed
// call was one the dead canary's caller (order@blue) had in flight or took before the gateway
// stopped deciding blue for it, that stopped within seconds, no call went from v2 order to v1
// inventory, and the release then finished.
func TestKillCanaryLosesOnlyTheCallsInFlight(t *testing.T) {
	var out strings.Builder
	ok, err := run(&out, options{phase: 150 * time.Millisecond, workers: 4, fault: killCanary})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !ok || !strings.Contains(out.String(), " 0 calls crossed from new code to old code") {
		t.Fatal("the loss was not bounded by the calls in flight at the dead canary's caller, or a call crossed from v2 to v1")
	}
	if !strings.Contains(out.String(), "its record still in etcd then: true") {
		t.Fatal("the killed instance's record left etcd at once: the kill cleaned up")
	}
	if !strings.Contains(out.String(), "finish (all v2, 50/50)") {
		t.Fatal("the release did not finish after the kill")
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
