package release

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/switchyard-go/switchyard/deploy"
)

// Defaults and values of a Plan.
const (
	// DefaultMinRequests is Analysis.MinRequests when it is 0.
	DefaultMinRequests = 100
	// DefaultMaxErrorRateIncrease is Analysis.MaxErrorRateIncrease when it is 0, in
	// percentage points.
	DefaultMaxErrorRateIncrease = 1.0

	// SwitchBack is the only Plan.OnBreach (and its default): all traffic to the old color at
	// once.
	SwitchBack = "switch-back"
	// AtEndDone (the default Plan.AtEnd): the plan succeeds once the last step's hold has
	// passed.
	AtEndDone = "done"
	// AtEndWait: after the last step's hold the plan waits, still guarded, for
	// `switchyard release promote` (Runner.Command with Promote) to succeed.
	AtEndWait = "wait"
)

// Plan is a release plan: the YAML file of `switchyard release run`, the same struct for Go
// callers. ParsePlan reads one; Validate checks one built in Go (after WithDefaults).
type Plan struct {
	// Channel is the release channel the plan drives; its release must be open (`switchyard
	// channel open`) and the new color deployed before the plan runs.
	Channel string `json:"channel"`
	// New is the color that carries the new version: blue or green. The other color is the
	// old one, which a breach sends all traffic back to.
	New deploy.Color `json:"new"`
	// Steps are the new color's shares of traffic, in increasing order, each held for a while.
	Steps []Step `json:"steps"`
	// Analysis is how each step is judged.
	Analysis Analysis `json:"analysis"`
	// OnBreach is what a failed step does: SwitchBack ("switch-back", the default and only
	// value): all traffic to the old color at once.
	OnBreach string `json:"on_breach,omitempty"`
	// AtEnd is what happens after the last step's hold: AtEndDone ("done", the default) or
	// AtEndWait ("wait").
	AtEnd string `json:"at_end,omitempty"`
}

// Step is one step of a plan.
type Step struct {
	// Percent is the new color's share of traffic, 0 < Percent <= 100 (fractions allowed:
	// 0.5 is a 0.5 % canary).
	Percent float64 `json:"percent"`
	// Hold is how long the step lasts once its analysis can judge (every app has
	// Analysis.MinRequests requests on the new color): the step passes when Hold has gone by
	// since then without a breach. 0 passes as soon as the analysis can judge and finds no
	// breach. Written as a duration string: "30s", "1m30s".
	Hold Duration `json:"hold"`
}

// Analysis is how a step is judged, per app of the channel: the new color's requests since
// the step began against the old color's in the same window.
type Analysis struct {
	// MinRequests is how many requests the new color must have served in an app during the
	// step before the app is judged. Until every app has them the step does not pass, however
	// long it has lasted. Default DefaultMinRequests (100).
	MinRequests int `json:"min_requests,omitempty"`
	// MaxErrorRateIncrease is how far, in percentage points, the new color's error rate may
	// exceed the old color's before the step fails: 1 means 1.4 % against 0.5 % passes and
	// 1.6 % fails. Default DefaultMaxErrorRateIncrease (1); 0 means the default, so write a
	// small value such as 0.01 to allow (almost) no increase.
	MaxErrorRateIncrease float64 `json:"max_error_rate_increase,omitempty"`
	// MaxP99Ratio is how many times the old color's p99 latency the new color's may be before
	// the step fails (1.5: half again as slow). Default 0: latency is not judged.
	MaxP99Ratio float64 `json:"max_p99_ratio,omitempty"`
}

// Duration is a time.Duration written as a duration string ("30s") in YAML and JSON.
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string such as "30s" or "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s is not a duration: write a duration string such as \"30s\" or \"1m30s\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration: write a duration string such as \"30s\" or \"1m30s\"", s)
	}
	*d = Duration(v)
	return nil
}

// String is d as time.Duration writes it.
func (d Duration) String() string { return time.Duration(d).String() }

// ErrInvalidPlan is wrapped by every error of ParsePlan and Plan.Validate.
var ErrInvalidPlan = errors.New("release: invalid plan")

// planError is a plan that cannot run: what is wrong and what to write instead.
type planError struct{ msg string }

func (e *planError) Error() string        { return "release: plan: " + e.msg }
func (e *planError) Is(target error) bool { return target == ErrInvalidPlan }

func invalid(format string, args ...any) error { return &planError{msg: fmt.Sprintf(format, args...)} }

// maxPlanBytes bounds a plan file: a plan is a page of YAML.
const maxPlanBytes = 64 << 10

// maxSteps bounds a plan's steps.
const maxSteps = 100

// ParsePlan reads a plan from YAML (or JSON, which is YAML), strictly: an unknown or
// repeated field is refused, as is a value of the wrong kind. The plan it returns has its
// defaults set (WithDefaults) and is valid (Validate). Every error wraps ErrInvalidPlan and
// says what is wrong and what to write instead.
func ParsePlan(data []byte) (Plan, error) {
	if len(data) > maxPlanBytes {
		return Plan{}, invalid("the file is %d bytes; a plan is at most %d: it should be a page of YAML", len(data), maxPlanBytes)
	}
	var p Plan
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return Plan{}, invalid("%s", yamlError(err))
	}
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// yamlError rewords what sigs.k8s.io/yaml and encoding/json say about a plan file.
func yamlError(err error) string {
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		if ute.Field == "" {
			return fmt.Sprintf("the file is a YAML %s, not a mapping: write a plan such as channel: trade, new: blue, steps: [{percent: 10, hold: 1m}]", ute.Value)
		}
		return fmt.Sprintf("%s is %s, not %s: write %s", ute.Field, ute.Value, ute.Type, kindHint(ute.Type.String()))
	}
	msg := err.Error()
	for _, noise := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: ", "yaml: "} {
		msg = strings.ReplaceAll(msg, noise, "")
	}
	switch {
	case strings.HasPrefix(msg, "unknown field "):
		return msg + "; a plan has channel, new, steps (each: percent, hold), analysis (min_requests, max_error_rate_increase, max_p99_ratio), on_breach and at_end"
	case strings.Contains(msg, "already set in map"):
		msg = strings.Join(strings.Fields(strings.TrimPrefix(msg, "unmarshal errors:")), " ")
		return msg + ": write each field once"
	case strings.Contains(msg, "is not a duration"):
		return msg
	}
	return "not YAML: " + strings.Join(strings.Fields(msg), " ")
}

func kindHint(typ string) string {
	switch typ {
	case "float64", "int":
		return "a number"
	case "string", "deploy.Color":
		return "a string"
	case "[]release.Step":
		return "a list of steps, each {percent: 10, hold: 30s}"
	case "release.Analysis", "release.Step":
		return "a mapping"
	}
	return "a " + typ
}

// WithDefaults returns p with its defaults set: Analysis.MinRequests,
// Analysis.MaxErrorRateIncrease, OnBreach and AtEnd.
func (p Plan) WithDefaults() Plan {
	if p.Analysis.MinRequests == 0 {
		p.Analysis.MinRequests = DefaultMinRequests
	}
	if p.Analysis.MaxErrorRateIncrease == 0 {
		p.Analysis.MaxErrorRateIncrease = DefaultMaxErrorRateIncrease
	}
	if p.OnBreach == "" {
		p.OnBreach = SwitchBack
	}
	if p.AtEnd == "" {
		p.AtEnd = AtEndDone
	}
	p.Steps = append([]Step(nil), p.Steps...)
	return p
}

// Validate checks a plan with its defaults set (WithDefaults). Its errors wrap
// ErrInvalidPlan and say what to write instead.
func (p Plan) Validate() error {
	if p.Channel == "" {
		return invalid("channel is missing: write the release channel the plan drives, e.g. channel: trade")
	}
	if err := deploy.ValidateName("channel", p.Channel); err != nil {
		return invalid("channel: %v", err)
	}
	if p.New != deploy.Blue && p.New != deploy.Green {
		return invalid("new is %q: write the color that carries the new version, new: blue or new: green", p.New)
	}
	if len(p.Steps) == 0 {
		return invalid("steps is empty: write the new color's shares in order, e.g. steps: [{percent: 1, hold: 30s}, {percent: 10, hold: 1m}, {percent: 100, hold: 1m}]")
	}
	if len(p.Steps) > maxSteps {
		return invalid("%d steps; at most %d are allowed", len(p.Steps), maxSteps)
	}
	prev := 0.0
	for i, s := range p.Steps {
		switch {
		case math.IsNaN(s.Percent) || s.Percent <= 0 || s.Percent > 100:
			return invalid("step %d: percent is %s: write the new color's share of traffic, more than 0 and at most 100", i+1, fmtPercent(s.Percent))
		case s.Percent <= prev:
			return invalid("step %d: percent %s is not above step %d's %s: write the steps in increasing order", i+1, fmtPercent(s.Percent), i, fmtPercent(prev))
		case s.Hold < 0:
			return invalid("step %d: hold is %v: write how long the step lasts once it can be judged, 0 or more, e.g. hold: 30s", i+1, s.Hold)
		}
		prev = s.Percent
	}
	a := p.Analysis
	switch {
	case a.MinRequests < 0:
		return invalid("analysis.min_requests is %d: write how many requests the new color must serve before a step is judged, e.g. 100", a.MinRequests)
	case math.IsNaN(a.MaxErrorRateIncrease) || a.MaxErrorRateIncrease < 0 || a.MaxErrorRateIncrease > 100:
		return invalid("analysis.max_error_rate_increase is %v: write the percentage points the new color's error rate may exceed the old one's by, between 0 and 100, e.g. 1", a.MaxErrorRateIncrease)
	case math.IsNaN(a.MaxP99Ratio) || a.MaxP99Ratio < 0 || a.MaxP99Ratio > 0 && a.MaxP99Ratio < 1:
		return invalid("analysis.max_p99_ratio is %v: write how many times the old color's p99 the new one's may be, 1 or more (e.g. 1.5), or 0 not to judge latency", a.MaxP99Ratio)
	}
	if p.OnBreach != SwitchBack {
		return invalid("on_breach is %q: write on_breach: %s (all traffic back to the old color at once), or leave it out", p.OnBreach, SwitchBack)
	}
	if p.AtEnd != AtEndDone && p.AtEnd != AtEndWait {
		return invalid("at_end is %q: write at_end: %s (the plan succeeds after the last step) or at_end: %s (it waits for `switchyard release promote`)", p.AtEnd, AtEndDone, AtEndWait)
	}
	return nil
}

// Old is the color that carries the old version: the other one than New.
func (p Plan) Old() deploy.Color {
	if p.New == deploy.Blue {
		return deploy.Green
	}
	return deploy.Blue
}

// BluePercent is the rule's blue percent that gives the new color newPercent of the traffic.
func (p Plan) BluePercent(newPercent float64) float64 {
	if p.New == deploy.Blue {
		return newPercent
	}
	return 100 - newPercent
}

// fmtPercent writes a percent the way people do: 10, 0.5, 12.5.
func fmtPercent(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) }
