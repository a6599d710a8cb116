package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/window"
)

// statsServer serves GET /stats as an instance's admin server does, with requests (errors
// of them failed) counted in the last complete second, and registers app's instance id
// with that admin address. The instance is gone at cleanup.
func statsServer(t *testing.T, e *etcdtest.Server, app, id string, color deploy.Color, requests, errors int) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != window.StatsPath {
			http.NotFound(w, r)
			return
		}
		now := time.Now()
		win := window.New(func() time.Time { return now.Add(-time.Second) })
		for k := range requests {
			win.Request(3*time.Millisecond, k < errors)
		}
		snap := win.Snapshot()
		snap.Now = now.Unix()
		_ = json.NewEncoder(w).Encode(window.Stats{App: app, ID: id, Color: string(color), State: "serving", Window: snap})
	}))
	t.Cleanup(srv.Close)
	reg, err := registry.NewRegistrar(registry.Config{Client: e.Client(t), Logger: testutil.Logger(t), Instance: registry.Record{
		App: app, ID: id, Addr: "127.0.0.1:9000", Admin: srv.Listener.Addr().String(), Color: color, Version: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	if err := reg.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// top --once prints a row per app and color with its figures, a row per instance, and the
// rule's events; -o json prints the View.
func TestTopOnce(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := sy(t, e, "channel", "open", "trade", "--apps", "order,inventory"); code != 0 {
		t.Fatal(errs)
	}
	statsServer(t, e, "order", "order-b1", deploy.Blue, 50, 0)
	statsServer(t, e, "order", "order-g1", deploy.Green, 50, 5)
	code, out, errs := sy(t, e, "top", "trade", "--once")
	if code != 0 {
		t.Fatalf("top --once: exit %d %q %q", code, out, errs)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 {
			rows[f[0]+" "+f[1]] = f
		}
	}
	// APP COLOR TARGET OBSERVED REQ/S ERR% …
	if f := rows["order blue"]; len(f) < 6 || f[2] != "50.0%" || f[3] != "50.0%" || f[4] != "5.0" || f[5] != "0.0" {
		t.Errorf("order blue row %q in\n%s", f, out)
	}
	if f := rows["order green"]; len(f) < 6 || f[4] != "5.0" || f[5] != "10.0" {
		t.Errorf("order green row %q in\n%s", f, out)
	}
	if f := rows["inventory blue"]; len(f) < 5 || f[4] != "0.0" {
		t.Errorf("inventory blue row %q in\n%s", f, out)
	}
	if f := rows["order-g1 order"]; len(f) < 5 || f[2] != "green" || f[4] != "ready" {
		t.Errorf("instance row %q in\n%s", f, out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("--once wrote terminal escapes: %q", out)
	}
	code, out, _ = sy(t, e, "top", "trade", "--once", "-o", "json")
	var v dashboard.View
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || len(v.Channels) != 1 || v.Channels[0].Apps[1].App != "order" {
		t.Fatalf("top --once -o json: %d %q", code, out)
	}
	if code, _, errs := sy(t, e, "top", "nope", "--once"); code != 1 || !strings.Contains(errs, `channel "nope" has no rule`) {
		t.Errorf("top of a channel with no rule: exit %d %q", code, errs)
	}
	if code, _, errs := sy(t, e, "top"); code != 2 || !strings.Contains(errs, "missing channel name") {
		t.Errorf("top without a channel: exit %d %q", code, errs)
	}
}

// top without --once redraws in place: cursor home, each line erased to its end.
func TestTopRedrawsInPlace(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatal(errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- syTo(ctx, e, time.Second, &out, &errOut, "top", "trade") }()
	testutil.Eventually(t, "two frames", func() bool { return strings.Count(out.String(), ansiHome) >= 2 })
	cancel()
	if code := testutil.Receive(t, "top to end", done); code != 0 {
		t.Fatalf("top: exit %d %q", code, errOut.String())
	}
	s := out.String()
	if !strings.HasPrefix(s, ansiClear+ansiHome) || !strings.Contains(s, "order  blue") || !strings.Contains(s, ansiEraseLine+"\n") {
		t.Fatalf("frames: %q", s)
	}
}

// dashboard prints its URL and serves the page and the JSON until interrupted.
func TestDashboardServes(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatal(errs)
	}
	statsServer(t, e, "order", "order-b1", deploy.Blue, 20, 0)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- syTo(ctx, e, time.Second, pw, &errOut, "dashboard", "--listen", "127.0.0.1:0", "--channel", "trade")
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	i := strings.Index(line, "http://")
	if err != nil || i < 0 {
		t.Fatalf("first line %q: %v (stderr %q)", line, err, errOut.String())
	}
	url := strings.Fields(line[i:])[0]
	var v dashboard.View
	testutil.EventuallyNoError(t, "a view with order-b1", func() error {
		resp, err := http.Get(url + "api/view")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		v = dashboard.View{}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return err
		}
		if len(v.Channels) != 1 || len(v.Channels[0].Apps) != 1 || len(v.Channels[0].Apps[0].Instances) != 1 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	if in := v.Channels[0].Apps[0].Instances[0]; in.ID != "order-b1" || in.RPS != 2 {
		t.Errorf("instance %+v; want order-b1 at 2 req/s", in)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "<title>switchyard dashboard</title>") {
		t.Errorf("page: %.200s", body)
	}
	// An open event stream does not hold up the end.
	stream, err := http.Get(url + "api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	cancel()
	if code := testutil.Receive(t, "dashboard to end", done); code != 0 {
		t.Fatalf("dashboard: exit %d %q", code, errOut.String())
	}
	if code, _, errs := sy(t, e, "dashboard", "--listen", "nonsense"); code != 1 || !strings.Contains(errs, "--listen") {
		t.Errorf("a bad --listen: exit %d %q", code, errs)
	}
}
