package release

import (
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
)

// judge: too few requests wait; the error rate is against the old color's (or 0 when it
// served none); p99 is judged only when asked.
func TestJudge(t *testing.T) {
	a := Analysis{MinRequests: 100, MaxErrorRateIncrease: 1, MaxP99Ratio: 1.5}
	for _, c := range []struct {
		name   string
		f      Figures
		breach bool
		short  bool
		why    string
	}{
		{"too few", Figures{App: "order", NewRequests: 99, NewErrors: 99, NewErrorPct: 100}, false, true, ""},
		{"within", Figures{App: "order", NewRequests: 1000, NewErrorPct: 1.4, OldRequests: 1000, OldErrorPct: 0.5}, false, false, ""},
		{"over", Figures{App: "order", NewRequests: 2114, NewErrorPct: 18.7, OldRequests: 19020, OldErrorPct: 0.1}, true, false,
			"order: blue error rate 18.7 % over 2,114 requests vs green 0.1 % over 19,020 (more than 1 point above)"},
		{"old idle", Figures{App: "order", NewRequests: 100, NewErrorPct: 2}, true, false,
			"order: blue error rate 2.0 % over 100 requests vs green 0 % (it served no requests) (more than 1 point above)"},
		{"slow", Figures{App: "order", NewRequests: 100, NewP99MS: 40, OldRequests: 10, OldP99MS: 20}, true, false,
			"order: blue p99 40 ms over 100 requests vs green 20 ms (2.0×; at most 1.5× is allowed)"},
		{"slow, old idle", Figures{App: "order", NewRequests: 100, NewP99MS: 40}, false, false, ""},
	} {
		j := judge(a, deploy.Blue, deploy.Green, []Figures{c.f})
		if (j.breach >= 0) != c.breach || (len(j.short) > 0) != c.short || j.why != c.why {
			t.Errorf("%s: breach %d short %v why %q; want breach %v short %v why %q", c.name, j.breach, j.short, j.why, c.breach, c.short, c.why)
		}
	}
	if j := judge(Analysis{MinRequests: 1, MaxErrorRateIncrease: 1}, deploy.Blue, deploy.Green, []Figures{{NewRequests: 10, NewP99MS: 900, OldRequests: 10, OldP99MS: 1}}); j.breach >= 0 {
		t.Errorf("p99 judged without max_p99_ratio: %q", j.why)
	}
	if got := thousands(1234567); got != "1,234,567" {
		t.Errorf("thousands: %s", got)
	}
}
