package dashboard

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
	"github.com/switchyard-go/switchyard/window"
)

// Span is the stretch of time the figures of a View cover: the last ten complete seconds of
// each instance's window (the second in progress is left out, so rates are not diluted by a
// partial second).
const Span = 10 * time.Second

// HotLoad is the load (an instance's requests/s relative to the mean of its color's serving
// instances, in percent) from which an instance is flagged Hot: 150 means half again its
// fair share.
const HotLoad = 150

// The instance states of a View, in the order they take precedence.
const (
	StateNoAnswer = "no answer" // /stats failed or timed out, or the record has no admin address
	StateOffline  = "offline"   // answering, but not serving: lifecycle's starting, draining, drained, stopped
	StateDrained  = "drained"   // serving, but its color is drained by the rule (0 % of the traffic)
	StateWarming  = "warming"   // serving, within its warmup (StartTime + Warmup of its record)
	StateReady    = "ready"     // serving at full weight
)

// serving is lifecycle.StateServing as /stats writes it.
const serving = "serving"

// View is what the dashboard shows: every channel it follows, as of one poll. It is a plain
// value that encodes to JSON (GET /api/view).
type View struct {
	// At is when the poll that made the view ended; zero before the first poll.
	At time.Time `json:"at"`
	// PollMS is how long that poll took, in milliseconds.
	PollMS int64 `json:"poll_ms"`
	// SpanS is the stretch of time rates, percentages and percentiles cover (Span), in seconds.
	SpanS int `json:"span_s"`
	// Channels are the channels shown, releases open first, then by name.
	Channels []Channel `json:"channels"`
	// Error says why the view is incomplete (e.g. the channel has no rule), "" otherwise.
	Error string `json:"error,omitempty"`
}

// Channel is one release channel: its rule, its apps and the rule's recent events.
type Channel struct {
	Channel   string `json:"channel"`
	Releasing bool   `json:"releasing"`
	// TargetBlue is the blue percent traffic follows under the rule (traffic.EffectivePercent:
	// the rule's blue percent while a release is open, 50 otherwise).
	TargetBlue float64 `json:"target_blue"`
	// UpdatedAt is when the rule was last written.
	UpdatedAt time.Time `json:"updated_at"`
	Apps      []App     `json:"apps"`
	// Events are the rule's last MaxEvents events, oldest first.
	Events []Event `json:"events"`
}

// MaxEvents is how many of a channel's events a View keeps.
const MaxEvents = 50

// Event is one event of a channel's rule (traffic.Event).
type Event struct {
	// At is when the rule was written (the rule's UpdatedAt), or when the dashboard received
	// the event if the rule was deleted. Events replayed when the dashboard starts (see
	// traffic.Rules.Subscribe) carry the time of the rule as it was then.
	At   time.Time `json:"at"`
	Kind string    `json:"kind"` // OnStart, OnFlowChange, OnEnterAllBlue, … (traffic.EventKind)
	Old  float64   `json:"old"`  // the effective blue percent before
	New  float64   `json:"new"`  // and after
	// Reason is the rule's reason for the change (traffic.Reason), e.g. a release runner's
	// verdict; empty when the writer gave none.
	Reason string `json:"reason,omitempty"`
}

// App is one app of a channel: the split, per color figures and its instances.
type App struct {
	App string `json:"app"`
	// TargetBlue is the blue percent the rule asks for (as Channel.TargetBlue).
	TargetBlue float64 `json:"target_blue"`
	// ObservedBlue is blue's share of the requests blue and green instances served in the
	// span, in percent; absent when they served none.
	ObservedBlue *float64 `json:"observed_blue,omitempty"`
	// Colors are blue and green, always, and none when colorless instances are registered.
	Colors []Color `json:"colors"`
	// Instances are the registered instances, by color (blue, green, none) and ID.
	Instances []Instance `json:"instances"`
	// Error says why the instance list may be stale (etcd did not answer: the instances are
	// those of the last successful read), "" otherwise.
	Error string `json:"error,omitempty"`
}

// Color is the figures of one color of an app, summed over its instances that answered.
type Color struct {
	Color string `json:"color"` // blue, green, or none
	// TargetPercent is the color's share of traffic under the rule; absent for none.
	TargetPercent *float64 `json:"target_percent,omitempty"`
	// Drained says the rule sends the color no traffic (blue at 0 %, green at 100 %).
	Drained bool `json:"drained"`
	// Requests and Errors are the counts in the span; an error is a request whose gRPC status
	// is a server-side failure (lifecycle decides which: Unknown, DeadlineExceeded,
	// ResourceExhausted, Unimplemented, Internal, Unavailable, DataLoss).
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	// RPS is requests per second over the span; ErrorPercent is Errors/Requests in percent
	// (0 without requests).
	RPS          float64 `json:"rps"`
	ErrorPercent float64 `json:"error_percent"`
	// P50MS and P99MS are latency percentiles over the span, in milliseconds, from the merged
	// latency buckets of the color's instances (window.Second.Quantile); absent without
	// requests.
	P50MS *float64 `json:"p50_ms,omitempty"`
	P99MS *float64 `json:"p99_ms,omitempty"`
	// InFlight is the requests in progress now.
	InFlight int64 `json:"in_flight"`
	// CrossingsPS is crossings per second: requests whose sticky decision named the other
	// color than the instance's (stickiness broken somewhere upstream).
	CrossingsPS float64 `json:"crossings_ps"`
	// MessagesPS and JobRunsPS are mq messages handled and job runs per second; the error
	// counts are in the span.
	MessagesPS    float64 `json:"messages_ps"`
	MessageErrors uint64  `json:"message_errors"`
	JobRunsPS     float64 `json:"job_runs_ps"`
	JobErrors     uint64  `json:"job_errors"`
	// States counts the color's instances by state.
	States States `json:"states"`
}

// States counts instances by state (the State constants).
type States struct {
	Ready    int `json:"ready"`
	Warming  int `json:"warming"`
	Offline  int `json:"offline"`
	Drained  int `json:"drained"`
	NoAnswer int `json:"no_answer"`
}

// Instance is one registered instance.
type Instance struct {
	ID      string `json:"id"`
	Color   string `json:"color"` // blue, green, or none
	Version string `json:"version"`
	Addr    string `json:"addr"`
	Admin   string `json:"admin"` // where its /stats was read
	// State is one of the State constants; Lifecycle is the state its /stats reported
	// (serving, draining, …), "" when it did not answer.
	State     string `json:"state"`
	Lifecycle string `json:"lifecycle,omitempty"`
	// NoAnswer says why it did not answer ("" when it did).
	NoAnswer     string   `json:"no_answer,omitempty"`
	RPS          float64  `json:"rps"`
	ErrorPercent float64  `json:"error_percent"`
	P99MS        *float64 `json:"p99_ms,omitempty"`
	InFlight     int64    `json:"in_flight"`
	CrossingsPS  float64  `json:"crossings_ps"`
	// LoadPercent is its RPS relative to the mean RPS of its color's serving instances that
	// answered, in percent (100: its fair share); absent when it did not answer or that mean
	// is 0. Hot is LoadPercent >= HotLoad with at least two such instances.
	LoadPercent *float64 `json:"load_percent,omitempty"`
	Hot         bool     `json:"hot"`
}

// Sample is what one poll learnt of one instance: its record, and its /stats or why there
// was none.
type Sample struct {
	Record registry.Record
	// Stats is the instance's answer; nil when it did not answer.
	Stats *window.Stats
	// Err says why Stats is nil, e.g. "timed out after 800ms".
	Err string
}

// Aggregate builds a channel's view from its rule and a sample of each instance of its apps
// (samples of other apps are ignored), as of now (which decides warming). It is a pure
// function: the Dashboard calls it on every poll, and it can be called on stored samples.
// Events are left empty.
func Aggregate(now time.Time, rule traffic.Rule, samples []Sample) Channel {
	target := traffic.EffectivePercent(rule)
	ch := Channel{Channel: rule.Channel, Releasing: rule.Releasing, TargetBlue: target, UpdatedAt: rule.UpdatedAt,
		Apps: make([]App, 0, len(rule.Apps)), Events: []Event{}}
	for _, app := range rule.Apps {
		var mine []Sample
		for _, s := range samples {
			if s.Record.App == app {
				mine = append(mine, s)
			}
		}
		ch.Apps = append(ch.Apps, aggregateApp(now, rule, app, target, mine))
	}
	return ch
}

// colorOrder sorts blue, green, none.
func colorOrder(c deploy.Color) int {
	switch c {
	case deploy.Blue:
		return 0
	case deploy.Green:
		return 1
	}
	return 2
}

// colorName is c as a View writes it.
func colorName(c deploy.Color) string {
	if c == deploy.None {
		return "none"
	}
	return string(c)
}

func aggregateApp(now time.Time, rule traffic.Rule, app string, target float64, samples []Sample) App {
	slices.SortFunc(samples, func(a, b Sample) int {
		if d := colorOrder(a.Record.Color) - colorOrder(b.Record.Color); d != 0 {
			return d
		}
		return strings.Compare(a.Record.ID, b.Record.ID)
	})
	colors := []deploy.Color{deploy.Blue, deploy.Green}
	if slices.ContainsFunc(samples, func(s Sample) bool { return s.Record.Color == deploy.None }) {
		colors = append(colors, deploy.None)
	}
	out := App{App: app, TargetBlue: target, Colors: make([]Color, 0, len(colors)), Instances: make([]Instance, 0, len(samples))}
	secs := Span.Seconds()
	for _, c := range colors {
		cv := Color{Color: colorName(c)}
		switch c {
		case deploy.Blue:
			cv.TargetPercent = ptr(target)
			cv.Drained = rule.Releasing && target == 0
		case deploy.Green:
			cv.TargetPercent = ptr(100 - target)
			cv.Drained = rule.Releasing && target == 100
		}
		var sum window.Second
		var insts []Instance
		var servingIdx []int // indexes in insts of the serving instances that answered
		for _, s := range samples {
			if s.Record.Color != c {
				continue
			}
			iv := Instance{ID: s.Record.ID, Color: cv.Color, Version: s.Record.Version, Addr: s.Record.Addr, Admin: s.Record.Admin}
			switch {
			case s.Stats == nil:
				iv.State, iv.NoAnswer = StateNoAnswer, s.Err
				if iv.NoAnswer == "" {
					iv.NoAnswer = "unknown"
				}
				cv.States.NoAnswer++
				insts = append(insts, iv)
				continue
			case s.Stats.State != serving:
				iv.State = StateOffline
				cv.States.Offline++
			case cv.Drained:
				iv.State = StateDrained
				cv.States.Drained++
			case s.Record.Warmup > 0 && now.Before(s.Record.StartTime.Add(s.Record.Warmup)):
				iv.State = StateWarming
				cv.States.Warming++
			default:
				iv.State = StateReady
				cv.States.Ready++
			}
			iv.Lifecycle = s.Stats.State
			last := lastSpan(s.Stats.Window)
			sum.Add(last)
			iv.RPS = float64(last.Requests) / secs
			iv.ErrorPercent = percent(last.Errors, last.Requests)
			iv.P99MS = quantile(last, 0.99)
			iv.InFlight = s.Stats.InFlight
			iv.CrossingsPS = float64(last.Crossings) / secs
			cv.InFlight += s.Stats.InFlight
			if s.Stats.State == serving {
				servingIdx = append(servingIdx, len(insts))
			}
			insts = append(insts, iv)
		}
		var total float64
		for _, i := range servingIdx {
			total += insts[i].RPS
		}
		if mean := total / float64(max(1, len(servingIdx))); mean > 0 {
			for i := range insts {
				if insts[i].State == StateNoAnswer {
					continue
				}
				load := 100 * insts[i].RPS / mean
				insts[i].LoadPercent = ptr(load)
				insts[i].Hot = load >= HotLoad && len(servingIdx) >= 2
			}
		}
		cv.Requests, cv.Errors = sum.Requests, sum.Errors
		cv.RPS = float64(sum.Requests) / secs
		cv.ErrorPercent = percent(sum.Errors, sum.Requests)
		cv.P50MS, cv.P99MS = quantile(sum, 0.5), quantile(sum, 0.99)
		cv.CrossingsPS = float64(sum.Crossings) / secs
		cv.MessagesPS, cv.MessageErrors = float64(sum.Messages)/secs, sum.MsgErrors
		cv.JobRunsPS, cv.JobErrors = float64(sum.JobRuns)/secs, sum.JobErrors
		out.Colors = append(out.Colors, cv)
		out.Instances = append(out.Instances, insts...)
	}
	if blue, green := out.Colors[0].Requests, out.Colors[1].Requests; blue+green > 0 {
		out.ObservedBlue = ptr(percent(blue, blue+green))
	}
	return out
}

// lastSpan sums the Span's complete seconds of an instance's window: those before the
// second its snapshot was taken in.
func lastSpan(s window.Snapshot) window.Second {
	s.Now--
	return s.Sum(Span)
}

func percent(part, whole uint64) float64 {
	if whole == 0 {
		return 0
	}
	return 100 * float64(part) / float64(whole)
}

func quantile(s window.Second, q float64) *float64 {
	v := s.Quantile(q)
	if math.IsNaN(v) {
		return nil
	}
	return &v
}

func ptr(v float64) *float64 { return &v }
