package release

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/window"
)

// tally accumulates a step's figures: per instance, each second of its window from the
// second the step began in, the latest read of that second replacing the earlier ones (a
// second's counts only grow while it lasts). So a hold may outlast the window's minute, and
// a second read by two polls counts once. What the step's first second had counted by the
// first poll, if that poll was still in it, is left out: those requests were served at the
// previous step's share, before the step's rule took effect.
//
// Locking: none; only the runner's goroutine uses it.
type tally struct {
	from      int64                                   // the unix second the step began in
	instances map[instanceKey]map[int64]window.Second // by instance, by second
	colors    map[instanceKey]deploy.Color
	noAnswer  map[string]int // by app, in the last poll
	polled    bool
	baseline  map[instanceKey]window.Second // the first second's counts before the step
}

type instanceKey struct{ app, id string }

func newTally(from int64) *tally {
	return &tally{from: from, instances: map[instanceKey]map[int64]window.Second{}, colors: map[instanceKey]deploy.Color{},
		baseline: map[instanceKey]window.Second{}}
}

// add takes in one poll's samples, read at now.
func (t *tally) add(now time.Time, samples []dashboard.Sample) {
	first := !t.polled && now.Unix() == t.from
	t.polled = true
	t.noAnswer = map[string]int{}
	for _, s := range samples {
		if s.Stats == nil {
			t.noAnswer[s.Record.App]++
			continue
		}
		k := instanceKey{s.Record.App, s.Record.ID}
		secs := t.instances[k]
		if secs == nil {
			secs = map[int64]window.Second{}
			t.instances[k] = secs
		}
		t.colors[k] = s.Record.Color
		for _, sec := range s.Stats.Window.Seconds {
			if sec.At >= t.from {
				secs[sec.At] = sec
			}
			if first && sec.At == t.from {
				t.baseline[k] = sec
			}
		}
	}
}

// sum adds up app's seconds of color c.
func (t *tally) sum(app string, c deploy.Color) window.Second {
	var total window.Second
	for k, secs := range t.instances {
		if k.app != app || t.colors[k] != c {
			continue
		}
		base := t.baseline[k]
		for at, s := range secs {
			if at == t.from {
				total.Requests += s.Requests - min(s.Requests, base.Requests)
				total.Errors += s.Errors - min(s.Errors, base.Errors)
				for i := range total.Latency {
					total.Latency[i] += s.Latency[i] - min(s.Latency[i], base.Latency[i])
				}
				continue
			}
			total.Requests += s.Requests
			total.Errors += s.Errors
			for i := range total.Latency {
				total.Latency[i] += s.Latency[i]
			}
		}
	}
	return total
}

// figures are the apps' figures so far, the new color against the old.
func (t *tally) figures(apps []string, newC, oldC deploy.Color) []Figures {
	out := make([]Figures, 0, len(apps))
	for _, app := range apps {
		n, o := t.sum(app, newC), t.sum(app, oldC)
		out = append(out, Figures{
			App: app, NoAnswer: t.noAnswer[app],
			NewRequests: n.Requests, NewErrors: n.Errors, NewErrorPct: pct(n.Errors, n.Requests), NewP99MS: p99(n),
			OldRequests: o.Requests, OldErrors: o.Errors, OldErrorPct: pct(o.Errors, o.Requests), OldP99MS: p99(o),
		})
	}
	return out
}

func pct(part, whole uint64) float64 {
	if whole == 0 {
		return 0
	}
	return 100 * float64(part) / float64(whole)
}

func p99(s window.Second) float64 {
	v := s.Quantile(0.99)
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// judgement is what the figures of one poll say about a step.
type judgement struct {
	// breach is the index in the figures of the first app that failed, -1 if none; why
	// says how it failed.
	breach int
	why    string
	// short are the apps without the minimum sample yet.
	short []Figures
}

// judge judges a step's figures under a.
func judge(a Analysis, newC, oldC deploy.Color, figs []Figures) judgement {
	j := judgement{breach: -1}
	for i, f := range figs {
		if f.NewRequests < uint64(max(a.MinRequests, 0)) {
			j.short = append(j.short, f)
			continue
		}
		if j.breach >= 0 {
			continue
		}
		if f.NewErrorPct-f.OldErrorPct > a.MaxErrorRateIncrease {
			j.breach = i
			j.why = fmt.Sprintf("%s: %s error rate %s over %s requests vs %s %s (more than %s above)",
				f.App, newC, fmtPct(f.NewErrorPct), thousands(f.NewRequests), oldC, oldFigures(f), points(a.MaxErrorRateIncrease))
			continue
		}
		if a.MaxP99Ratio > 0 && f.OldRequests > 0 && f.OldP99MS > 0 && f.NewP99MS/f.OldP99MS > a.MaxP99Ratio {
			j.breach = i
			j.why = fmt.Sprintf("%s: %s p99 %s ms over %s requests vs %s %s ms (%s×; at most %s× is allowed)",
				f.App, newC, fmtNum(f.NewP99MS), thousands(f.NewRequests), oldC, fmtNum(f.OldP99MS),
				strconv.FormatFloat(f.NewP99MS/f.OldP99MS, 'f', 1, 64), fmtNum(a.MaxP99Ratio))
		}
	}
	return j
}

// points writes a number of percentage points: "1 point", "0.5 points".
func points(v float64) string {
	if v == 1 {
		return "1 point"
	}
	return fmtNum(v) + " points"
}

// oldFigures describes the old color's error rate, or its absence.
func oldFigures(f Figures) string {
	if f.OldRequests == 0 {
		return "0 % (it served no requests)"
	}
	return fmt.Sprintf("%s over %s", fmtPct(f.OldErrorPct), thousands(f.OldRequests))
}

// describe is the figures of every app in a few words, for a verdict that passed.
func describe(newC, oldC deploy.Color, figs []Figures) string {
	parts := make([]string, 0, len(figs))
	for _, f := range figs {
		s := fmt.Sprintf("%s: %s %s errors over %s requests vs %s %s", f.App, newC, fmtPct(f.NewErrorPct), thousands(f.NewRequests), oldC, oldFigures(f))
		if f.NewP99MS > 0 && f.OldP99MS > 0 {
			s += fmt.Sprintf(", p99 %s vs %s ms", fmtNum(f.NewP99MS), fmtNum(f.OldP99MS))
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// shortOf says which apps lack the minimum sample.
func shortOf(newC deploy.Color, min int, short []Figures) string {
	parts := make([]string, 0, len(short))
	for _, f := range short {
		s := fmt.Sprintf("%s has %s", f.App, thousands(f.NewRequests))
		if f.NoAnswer > 0 {
			s += fmt.Sprintf(" (%d instances do not answer /stats)", f.NoAnswer)
		}
		parts = append(parts, s)
	}
	return fmt.Sprintf("waiting for %s requests on %s: %s", thousands(uint64(min)), newC, strings.Join(parts, ", "))
}

// fmtPct writes a percentage with one decimal: "18.7 %".
func fmtPct(p float64) string { return strconv.FormatFloat(p, 'f', 1, 64) + " %" }

// fmtNum writes a figure without needless decimals: 1, 0.5, 12.25.
func fmtNum(v float64) string { return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) }

// thousands writes n with thousands separators: 2,114.
func thousands(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
