package dashboard_test

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

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/dashboard"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run starts a Dashboard on cfg (polling every 100 ms unless cfg says otherwise) and stops it
// at cleanup.
func run(t *testing.T, cfg dashboard.Config) *dashboard.Dashboard {
	t.Helper()
	if cfg.Poll == 0 {
		cfg.Poll = 100 * time.Millisecond
	}
	cfg.Logger = testutil.Logger(t)
	d, err := dashboard.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

// waitView waits, view by view, for one that satisfies cond, and returns it.
func waitView(t *testing.T, d *dashboard.Dashboard, what string, cond func(dashboard.View) bool) dashboard.View {
	t.Helper()
	deadline := time.After(testutil.Deadline)
	var last dashboard.View
	for {
		next := d.Updated()
		if last = d.Snapshot(); !last.At.IsZero() && cond(last) {
			return last
		}
		select {
		case <-next:
		case <-deadline:
			js, _ := json.MarshalIndent(last, "", " ")
			t.Fatalf("timed out waiting for %s; last view:\n%s", what, js)
		}
	}
}

// appOf returns the view of app in the view's only channel.
func appOf(v dashboard.View, app string) dashboard.App {
	for _, ch := range v.Channels {
		for _, a := range ch.Apps {
			if a.App == app {
				return a
			}
		}
	}
	return dashboard.App{}
}

func colorOf(a dashboard.App, c string) dashboard.Color {
	for _, cv := range a.Colors {
		if cv.Color == c {
			return cv
		}
	}
	return dashboard.Color{}
}

func instanceOf(a dashboard.App, id string) dashboard.Instance {
	for _, in := range a.Instances {
		if in.ID == id {
			return in
		}
	}
	return dashboard.Instance{}
}

// register writes an instance record straight into etcd, as an instance whose admin server
// is at admin would (it is deleted at cleanup).
func register(t *testing.T, cli *clientv3.Client, rec registry.Record) {
	t.Helper()
	rec.StartTime = time.Now()
	val, err := registry.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	key := deploy.InstanceKey(deploy.DefaultPrefix, rec.App, rec.ID)
	if _, err := cli.Put(context.Background(), key, string(val)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cli.Delete(context.Background(), key) })
}

// The event stream sends a View per poll; /api/view and the page answer too.
func TestTheHandlerStreamsAViewPerPoll(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(context.Background(), "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	d := run(t, dashboard.Config{Client: cli, Poll: 50 * time.Millisecond})
	srv := httptest.NewServer(d.Handler())
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var last time.Time
	for seen := 0; seen < 3; {
		if !sc.Scan() {
			t.Fatalf("the stream ended: %v", sc.Err())
		}
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var v dashboard.View
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		if !v.At.After(last) || len(v.Channels) != 1 || v.Channels[0].Channel != "trade" || appOf(v, "order").App != "order" {
			t.Fatalf("view %d: at %v after %v, %+v", seen, v.At, last, v.Channels)
		}
		last = v.At
		seen++
	}

	var v dashboard.View
	if err := getJSON(srv.URL+"/api/view", &v); err != nil || v.At.IsZero() || len(v.Channels) != 1 {
		t.Fatalf("/api/view: %v %+v", err, v)
	}
	page, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != 200 || !strings.Contains(string(body), `id="split-`) || !strings.Contains(string(body), "api/events") {
		t.Fatalf("GET /: %s %.200s", page.Status, body)
	}
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}
