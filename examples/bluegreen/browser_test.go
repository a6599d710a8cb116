package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/switchyard-go/switchyard/internal/testutil"
)

// browsers are the names a Chromium is found by on PATH.
var browsers = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// browser starts a headless Chromium and returns a chromedp context of one tab in it; both end
// at cleanup. Without a Chromium the test is skipped, unless CI=1 or
// SWITCHYARD_REQUIRE_BROWSER=1 (.ci/run sets it and installs Chromium): then it fails.
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range browsers {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		msg := fmt.Sprintf("no Chromium on PATH (looked for %s); .ci/run installs it (apt-get install chromium)", strings.Join(browsers, ", "))
		if os.Getenv("CI") == "1" || os.Getenv("SWITCHYARD_REQUIRE_BROWSER") == "1" {
			t.Fatal(msg + "; CI=1 or SWITCHYARD_REQUIRE_BROWSER=1 makes this test mandatory")
		}
		t.Skip(msg)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path),
		chromedp.NoSandbox, // CI containers run as root, where Chromium's sandbox does not start
		chromedp.WindowSize(1280, 1600))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// page is what the dashboard page shows, read from its DOM (the ids and data-field elements
// dashboard's doc lists): texts as the page writes them ("–" for no value).
type page struct {
	ViewAt string             `json:"viewAt"`
	Conn   string             `json:"conn"`
	Apps   map[string]pageApp `json:"apps"`
	Events []string           `json:"events"` // newest first
}

type pageApp struct {
	Target    string               `json:"target"`
	Observed  string               `json:"observed"`
	BarBlue   string               `json:"barBlue"` // the observed bar's blue width, e.g. "29.3%"
	Colors    map[string]pageColor `json:"colors"`
	Instances []string             `json:"instances"` // "<id> <state>"
}

type pageColor struct {
	RPS      string `json:"rps"`
	Errors   string `json:"errors"`
	P99      string `json:"p99"`
	InFlight string `json:"inFlight"`
	Cross    string `json:"crossings"`
	Messages string `json:"messages"`
	Jobs     string `json:"jobs"`
	Ready    string `json:"ready"`
	Drained  string `json:"drained"` // instances drained
	Flag     string `json:"flag"`    // "drained" when the card says the color is drained
}

// readPage is the script that reads a page.
const readPage = `(() => {
  const txt = (sel, root = document) => { const e = root.querySelector(sel); return e ? e.textContent.trim() : ""; };
  const apps = {};
  for (const sec of document.querySelectorAll("section.app[data-app]")) {
    const app = sec.dataset.app, colors = {};
    for (const c of sec.querySelectorAll(".card[data-color]")) {
      const f = name => txt('[data-field="' + name + '"]', c);
      colors[c.dataset.color] = {rps: f("rps"), errors: f("error_percent"), p99: f("p99_ms"), inFlight: f("in_flight"),
        crossings: f("crossings_ps"), messages: f("messages_ps"), jobs: f("job_runs_ps"), ready: f("ready"),
        drained: f("drained_instances"), flag: f("drained")};
    }
    const bar = sec.querySelector(".bar.observed .blue");
    apps[app] = {target: txt("#target-" + app), observed: txt("#observed-" + app), barBlue: bar ? bar.style.width : "",
      colors, instances: [...sec.querySelectorAll("tr[data-instance]")].map(r => r.dataset.instance + " " + r.dataset.state)};
  }
  return {viewAt: document.body.dataset.viewAt || "", conn: txt("#conn"), apps,
    events: [...document.querySelectorAll("#events-trade li")].map(li => [...li.children].map(e => e.textContent.trim()).join(" "))};
})()`

// num is a figure of the page as a number (NaN for "–" or nothing).
func num(s string) float64 {
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// String is the page's figures on one line per app, for the log.
func (p page) String() string {
	var b strings.Builder
	for _, app := range []string{"order", "inventory"} {
		a := p.Apps[app]
		fmt.Fprintf(&b, "\n  %-9s target blue %s%%, observed blue %s%% (bar %s)", app, a.Target, a.Observed, a.BarBlue)
		for _, c := range []string{"blue", "green"} {
			x := a.Colors[c]
			fmt.Fprintf(&b, "; %s %s req/s, %s%% errors, p99 %s ms, crossings/s %s, mq %s/s, jobs %s/s, ready %s, drained %s",
				c, x.RPS, x.Errors, x.P99, x.Cross, x.Messages, x.Jobs, x.Ready, x.Drained)
		}
		fmt.Fprintf(&b, "; instances %v", a.Instances)
	}
	n := min(len(p.Events), 4)
	fmt.Fprintf(&b, "\n  events (newest first) %q", p.Events[:n])
	return b.String()
}

// waitPage reads the page until cond holds (it re-renders on every poll of the dashboard)
// and returns what it showed; it fails t with the last page after testutil.Deadline.
func waitPage(t *testing.T, ctx context.Context, what string, cond func(page) bool) page {
	t.Helper()
	var last page
	var lastErr error
	err := testutil.Poll(context.Background(), testutil.Deadline, func() bool {
		js, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](readPage))
		if err != nil {
			lastErr = err
			return false
		}
		var p page
		if lastErr = json.Unmarshal(js, &p); lastErr != nil {
			return false
		}
		last = p
		return cond(p)
	})
	if err != nil {
		t.Fatalf("timed out after %v waiting for the page to show %s (last error %v); it showed:%v", testutil.Deadline, what, lastErr, last)
	}
	return last
}

// The dashboard page in a real browser during the demo's release (load through the gateway
// all along, the dashboard polling every 200 ms): at 50 % both colors serve at order and at
// inventory and the observed split bar sits near the middle; after the shift to 0 % the
// target reads 0, blue's cards say drained and its observed share falls, and the timeline
// shows the shift; once blue restarts as v2 its cards read 0 req/s (its new instances have
// served nothing), the observed split 0 and its instance rows are the v2 ones; at 50 % again
// blue's requests/s and observed share rise and the timeline shows 0→50. The log has the
// page's numbers at each phase.
func TestTheDashboardPageFollowsARelease(t *testing.T) {
	ctx := browser(t) // first: skipped without a browser before the system starts
	sys, w := startTestSystem(t, 0, nil, 200*time.Millisecond)
	if err := chromedp.Do(ctx, chromedp.Navigate(w.url)); err != nil {
		t.Fatal(err)
	}
	stopProducer, err := produce(sys.nats.URL()) // mq work for the cards
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopProducer)
	l := startLoad(context.Background(), sys.gateway, 4)
	t.Cleanup(l.close)
	begin := time.Now()
	phase := func(name string, p page) {
		t.Logf("%s (%.1f s in): the page showed%v", name, time.Since(begin).Seconds(), p)
	}
	serving := func(p page, app, color string) bool { return num(p.Apps[app].Colors[color].RPS) > 0 }

	sys.step(t, "open", sys.open, "")
	// Both colors serving, and 100 requests or more at each app in the 10 s the figures cover,
	// for a split worth comparing.
	enough := func(p page, app string) bool {
		b, g := num(p.Apps[app].Colors["blue"].RPS), num(p.Apps[app].Colors["green"].RPS)
		return b > 0 && g > 0 && b+g >= 10
	}
	half := waitPage(t, ctx, "50 % with both colors serving at both apps", func(p page) bool {
		return len(p.Apps) == 2 && p.Apps["order"].Target == "50.0" && p.Apps["inventory"].Target == "50.0" &&
			enough(p, "order") && enough(p, "inventory") &&
			slices.ContainsFunc(p.Events, func(e string) bool { return strings.Contains(e, "OnStart") })
	})
	phase("open, 50 %", half)
	for _, app := range []string{"order", "inventory"} {
		a := half.Apps[app]
		if obs := num(a.Observed); math.Abs(obs-50) > 15 {
			t.Errorf("%s at 50 %%: observed blue %s%%, want about 50", app, a.Observed)
		}
		if bar := num(a.BarBlue); math.Abs(bar-num(a.Observed)) > 0.1 {
			t.Errorf("%s: the observed bar's blue is %s wide, its label says %s%%", app, a.BarBlue, a.Observed)
		}
	}

	sys.step(t, "drain blue", sys.shift(0), "blue")
	drained := waitPage(t, ctx, "blue drained, its observed share falling, the shift in the timeline", func(p page) bool {
		o := p.Apps["order"]
		return o.Target == "0.0" && o.Colors["blue"].Flag == "drained" && o.Colors["blue"].Drained == "1" &&
			num(o.Observed) < num(half.Apps["order"].Observed)-5 && len(p.Events) > 0 && strings.Contains(p.Events[0], "OnEnterAllGreen") &&
			slices.ContainsFunc(p.Events, func(e string) bool { return strings.Contains(e, "OnFlowChange 50.0→0.0") })
	})
	phase("drain blue, 0 %", drained)
	if num(drained.Apps["order"].BarBlue) >= num(half.Apps["order"].BarBlue) {
		t.Errorf("the observed bar's blue did not shrink: %s at 50 %%, %s at 0 %%", half.Apps["order"].BarBlue, drained.Apps["order"].BarBlue)
	}

	sys.step(t, "restart blue as v2", func(ctx context.Context) error { return sys.restart(ctx, "blue") }, "blue")
	restarted := waitPage(t, ctx, "blue's v2 instances at 0 req/s and the observed split at 0", func(p page) bool {
		for _, app := range []string{"order", "inventory"} {
			a := p.Apps[app]
			if !slices.Contains(a.Instances, app+"-blue-v2 drained") || slices.ContainsFunc(a.Instances, func(i string) bool { return strings.HasPrefix(i, app+"-blue-v1") }) ||
				a.Colors["blue"].RPS != "0.0" || a.Observed != "0.0" || !serving(p, app, "green") {
				return false
			}
		}
		return true
	})
	phase("restart blue as v2", restarted)

	sys.step(t, "shift to 50 %", sys.shift(50), "")
	back := waitPage(t, ctx, "blue serving again at 50 %, its observed share rising, 0→50 in the timeline", func(p page) bool {
		for _, app := range []string{"order", "inventory"} {
			a := p.Apps[app]
			if a.Target != "50.0" || !serving(p, app, "blue") || num(a.Observed) < 10 || a.Colors["blue"].Ready != "1" {
				return false
			}
		}
		return slices.ContainsFunc(p.Events, func(e string) bool { return strings.Contains(e, "OnFlowChange 0.0→50.0") })
	})
	phase("canary back to 50 % on blue v2", back)
	for _, p := range []page{half, drained, restarted, back} {
		for app, a := range p.Apps {
			for color, c := range a.Colors {
				if c.Errors != "0.0" {
					t.Errorf("%s %s shows %s%% errors; nothing fails in this release", app, color, c.Errors)
				}
			}
		}
	}
}
