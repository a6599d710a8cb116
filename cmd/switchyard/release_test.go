package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/release"
)

// greeterInstance starts a lifecycle instance of app with color serving the test greeter
// (and /stats on its admin server), stopped at cleanup.
func greeterInstance(t *testing.T, e *etcdtest.Server, app, id string, color deploy.Color) {
	t.Helper()
	inst, err := lifecycle.New(lifecycle.Config{
		Client: e.Client(t), App: app, ID: id, Color: color, Version: "v-" + string(color), Warmup: -1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 50 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 3 * time.Second,
		TTL: 2 * time.Second, Logger: testutil.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &greeter{id: id})
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

type greeter struct {
	greeterpb.UnimplementedGreeterServer
	id string
}

func (g *greeter) SayHello(context.Context, *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	return &greeterpb.HelloReply{Instance: g.id}, nil
}

// callOrder calls app order through the registry resolver and the weighted balancer until
// the test ends.
func callOrder(t *testing.T, e *etcdtest.Server) {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: e.Client(t), Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := testutil.Greeter(t, "switchyard:///order", grpc.WithResolvers(rb))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			_, _ = c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// releaseStatusOf reads `release status trade -o json`.
func releaseStatusOf(t *testing.T, e *etcdtest.Server) (release.Progress, bool) {
	t.Helper()
	code, out, _ := sy(t, e, "release", "status", "trade", "-o", "json")
	var p release.Progress
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
		return p, false
	}
	return p, true
}

// release run with a plan file drives the release; a second run is refused naming the
// first; status, pause, resume and abort work on it; the aborted run exits 1 with the verdict.
func TestReleaseFromTheCommandLine(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %s", errs)
	}
	greeterInstance(t, e, "order", "order-green", deploy.Green)
	greeterInstance(t, e, "order", "order-blue", deploy.Blue)
	callOrder(t, e)
	plan := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(plan, []byte("channel: trade\nnew: blue\nsteps:\n  - {percent: 10, hold: 200ms}\n  - {percent: 50, hold: 1h}\nanalysis: {min_requests: 20}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := sy(t, e, "release", "status", "trade"); code != 1 || !strings.Contains(errs, "no release plan in channel trade: start one with `switchyard release run plan.yaml`") {
		t.Fatalf("status before any plan: %d %q", code, errs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	ran := make(chan int, 1)
	go func() { ran <- syTo(ctx, e, time.Second, &out, &errOut, "release", "run", plan, "--poll", "50ms") }()
	t.Cleanup(func() { cancel(); <-ran })

	testutil.Eventually(t, "the plan at step 2", func() bool {
		p, ok := releaseStatusOf(t, e)
		return ok && p.Step == 1 && p.Runner != ""
	})
	if code, _, errs := sy(t, e, "release", "run", plan); code != 1 || !strings.Contains(errs, "release: channel trade is driven by runner ") {
		t.Fatalf("a second run: %d %q", code, errs)
	}
	code, txt, _ := sy(t, e, "release", "status", "trade")
	if code != 0 || !strings.Contains(txt, "channel trade: running, blue new, step 2/2 (blue 50 %, hold 1h0m0s)") ||
		!strings.Contains(txt, "step 1 (10 %) passed: order: blue 0.0 % errors over ") {
		t.Fatalf("status: %d\n%s", code, txt)
	}
	if code, txt, errs := sy(t, e, "release", "pause", "trade"); code != 0 || !strings.HasPrefix(txt, "trade: paused at step 2/2: paused by ") {
		t.Fatalf("pause: %d %q %q", code, txt, errs)
	}
	if code, txt, errs := sy(t, e, "release", "resume", "trade"); code != 0 || !strings.HasPrefix(txt, "trade: running at step 2/2") {
		t.Fatalf("resume: %d %q %q", code, txt, errs)
	}
	if code, txt, errs := sy(t, e, "release", "abort", "trade"); code != 0 || !strings.HasPrefix(txt, "trade: aborted at step 2/2") {
		t.Fatalf("abort: %d %q %q", code, txt, errs)
	}
	if code := testutil.Receive(t, "the run to end", ran); code != 1 ||
		!strings.Contains(errOut.String(), "switchyard: release: step 2 (50 %) aborted: aborted by ") {
		t.Fatalf("the aborted run: exit %d, stderr %q", code, errOut.String())
	}
	ran <- 1 // for the cleanup
	if !strings.Contains(out.String(), `msg="release: verdict"`) || !strings.Contains(out.String(), "outcome=passed") {
		t.Errorf("the run's log:\n%s", out.String())
	}
	if code, txt, _ := sy(t, e, "channel", "status", "trade", "-o", "json"); code != 0 || !strings.Contains(txt, `"blue_percent":0`) {
		t.Errorf("the rule after abort: %s", txt)
	}
}

// A plan that passes exits 0; a plan file with a mistake exits 1 saying what to write; a
// release command without a subcommand is a usage error.
func TestReleaseRunSucceedsAndRefuses(t *testing.T) {
	e := etcdtest.Start(t)
	if code, _, errs := sy(t, e, "channel", "open", "trade", "--apps", "order"); code != 0 {
		t.Fatalf("open: %s", errs)
	}
	greeterInstance(t, e, "order", "order-green", deploy.Green)
	greeterInstance(t, e, "order", "order-blue", deploy.Blue)
	callOrder(t, e)
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(good, []byte("channel: trade\nnew: green\nsteps: [{percent: 100, hold: 100ms}]\nanalysis: {min_requests: 10}\n"), 0o600)
	_ = os.WriteFile(bad, []byte("channel: trade\nnew: green\nsteps: [{percent: 100, hold: 100}]\n"), 0o600)
	if code, out, errs := sy(t, e, "release", "run", good, "--poll", "50ms"); code != 0 || !strings.Contains(out, "switchyard: succeeded: green has 100 % of the traffic") {
		t.Fatalf("run: %d\n%s\n%s", code, out, errs)
	}
	if code, txt, _ := sy(t, e, "channel", "status", "trade", "-o", "json"); code != 0 || !strings.Contains(txt, `"blue_percent":0`) {
		t.Errorf("the rule after green's 100 %%: %s", txt)
	}
	if code, _, errs := sy(t, e, "release", "run", bad); code != 1 || !strings.Contains(errs, "bad.yaml: release: plan: 100 is not a duration: write a duration string such as \"30s\"") {
		t.Fatalf("a bad plan: %d %q", code, errs)
	}
	if code, _, errs := sy(t, e, "release"); code != 2 || !strings.Contains(errs, "missing release subcommand (run, status, pause, resume, promote, abort)") {
		t.Fatalf("release alone: %d %q", code, errs)
	}
}
