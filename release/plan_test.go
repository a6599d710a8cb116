package release_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/release"
)

const goodPlan = `
channel: trade
new: blue
steps:
  - {percent: 1, hold: 30s}
  - {percent: 10, hold: 1m}
  - percent: 50
    hold: 1m30s
  - {percent: 100, hold: 2m}
analysis:
  min_requests: 200
  max_error_rate_increase: 0.5
  max_p99_ratio: 1.5
on_breach: switch-back
at_end: wait
`

func TestParsePlan(t *testing.T) {
	p, err := release.ParsePlan([]byte(goodPlan))
	if err != nil {
		t.Fatal(err)
	}
	want := release.Plan{Channel: "trade", New: deploy.Blue,
		Steps:    []release.Step{{1, release.Duration(30 * time.Second)}, {10, release.Duration(time.Minute)}, {50, release.Duration(90 * time.Second)}, {100, release.Duration(2 * time.Minute)}},
		Analysis: release.Analysis{MinRequests: 200, MaxErrorRateIncrease: 0.5, MaxP99Ratio: 1.5}, OnBreach: "switch-back", AtEnd: "wait"}
	if !equalPlans(p, want) {
		t.Fatalf("parsed %+v\nwant   %+v", p, want)
	}
	// The defaults.
	p, err = release.ParsePlan([]byte("channel: trade\nnew: green\nsteps: [{percent: 100, hold: 0s}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Analysis != (release.Analysis{MinRequests: 100, MaxErrorRateIncrease: 1}) || p.OnBreach != release.SwitchBack || p.AtEnd != release.AtEndDone {
		t.Fatalf("defaults: %+v", p)
	}
	if p.Old() != deploy.Blue || p.BluePercent(10) != 90 {
		t.Fatalf("green new: old %s, 10 %% green is %v %% blue", p.Old(), p.BluePercent(10))
	}
}

func equalPlans(a, b release.Plan) bool {
	if len(a.Steps) != len(b.Steps) {
		return false
	}
	for i := range a.Steps {
		if a.Steps[i] != b.Steps[i] {
			return false
		}
	}
	a.Steps, b.Steps = nil, nil
	return a.Channel == b.Channel && a.New == b.New && a.Analysis == b.Analysis && a.OnBreach == b.OnBreach && a.AtEnd == b.AtEnd
}

// Every refusal says what is wrong and what to write instead.
func TestParsePlanRefuses(t *testing.T) {
	base := "channel: trade\nnew: blue\n"
	for _, c := range []struct{ in, say string }{
		{base + "steps: [{percent: 10, hold: 30s}]\nstep: 3\n", `unknown field "step"; a plan has channel, new, steps`},
		{base + "steps: [{percent: 10, hold: 30s, wait: 1}]\n", `unknown field "wait"`},
		{base + "steps: [{percent: 10, hold: 30}]\n", `30 is not a duration: write a duration string such as "30s"`},
		{base + "steps: [{percent: 10, hold: soon}]\n", `"soon" is not a duration`},
		{base + "steps: [{percent: ten, hold: 1s}]\n", "is string, not float64: write a number"},
		{base + "steps: 10\n", "write a list of steps"},
		{"new: blue\nsteps: [{percent: 10, hold: 1s}]\n", "channel is missing: write the release channel"},
		{"channel: a/b\nnew: blue\nsteps: [{percent: 10, hold: 1s}]\n", "channel:"},
		{"channel: trade\nnew: red\nsteps: [{percent: 10, hold: 1s}]\n", `new is "red": write the color that carries the new version, new: blue or new: green`},
		{base, "steps is empty: write the new color's shares in order"},
		{base + "steps: [{percent: 0, hold: 1s}]\n", "step 1: percent is 0: write the new color's share of traffic, more than 0 and at most 100"},
		{base + "steps: [{percent: 101, hold: 1s}]\n", "step 1: percent is 101"},
		{base + "steps: [{percent: 10, hold: 1s}, {percent: 5, hold: 1s}]\n", "step 2: percent 5 is not above step 1's 10: write the steps in increasing order"},
		{base + "steps: [{percent: 10, hold: -1s}]\n", "step 1: hold is -1s"},
		{base + "steps: [{percent: 10, hold: 1s}]\nanalysis: {min_requests: -1}\n", "analysis.min_requests is -1"},
		{base + "steps: [{percent: 10, hold: 1s}]\nanalysis: {max_error_rate_increase: 200}\n", "analysis.max_error_rate_increase is 200"},
		{base + "steps: [{percent: 10, hold: 1s}]\nanalysis: {max_p99_ratio: 0.5}\n", "analysis.max_p99_ratio is 0.5: write how many times the old color's p99"},
		{base + "steps: [{percent: 10, hold: 1s}]\non_breach: ignore\n", `on_breach is "ignore": write on_breach: switch-back`},
		{base + "steps: [{percent: 10, hold: 1s}]\nat_end: finish\n", `at_end is "finish": write at_end: done`},
		{base + "channel: trade\nsteps: []\n", `line 3: key "channel" already set in map: write each field once`},
		{"- a\n- b\n", "the file is a YAML array, not a mapping: write a plan such as channel: trade"},
		{"channel: [\n", "not YAML: line 1: did not find expected node content"},
	} {
		_, err := release.ParsePlan([]byte(c.in))
		if !errors.Is(err, release.ErrInvalidPlan) || !strings.Contains(err.Error(), c.say) || !strings.HasPrefix(err.Error(), "release: plan: ") {
			t.Errorf("ParsePlan(%q) = %v\nwant an ErrInvalidPlan saying %q", c.in, err, c.say)
		}
	}
}

// The parser never panics, and what it accepts is valid and survives a round trip.
func FuzzParsePlan(f *testing.F) {
	for _, seed := range []string{goodPlan, "channel: trade\nnew: green\nsteps: [{percent: 100, hold: 0s}]\n", "{}", "steps: [{percent: 1e308}]", "channel: x\nnew: blue\nsteps: [{percent: 0.001, hold: 1ns}]"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := release.ParsePlan(data)
		if err != nil {
			if !errors.Is(err, release.ErrInvalidPlan) {
				t.Fatalf("error %v does not wrap ErrInvalidPlan", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParsePlan accepted a plan Validate refuses: %v", err)
		}
	})
}
