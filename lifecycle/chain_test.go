package lifecycle_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
)

// callerColorHeader is the metadata in which a hop of the chain test tells the next hop its
// own color, so that the callee can count requests that crossed from blue code to green.
const callerColorHeader = "x-test-caller-color"

// hop is one instance of the chain test: it answers with its id, after calling next (if any)
// and appending next's answer: "order-blue>inventory-blue-1".
type hop struct {
	greeterpb.UnimplementedGreeterServer
	id, color string
	next      greeterpb.GreeterClient
	fromBlue  atomic.Int64 // requests whose caller said it was blue code
}

func (h *hop) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(callerColorHeader)) > 0 && md.Get(callerColorHeader)[0] == "blue" {
		h.fromBlue.Add(1)
	}
	if h.next == nil {
		return &greeterpb.HelloReply{Instance: h.id}, nil
	}
	resp, err := h.next.SayHello(metadata.AppendToOutgoingContext(ctx, callerColorHeader, h.color), req)
	if err != nil {
		return nil, err
	}
	return &greeterpb.HelloReply{Instance: h.id + ">" + resp.GetInstance()}, nil
}

// instanceProcessEnv, when set (to a JSON processConfig), makes the test binary run one
// instance of the chain test instead of the tests (see TestMain).
const instanceProcessEnv = "SWITCHYARD_LIFECYCLE_TEST_INSTANCE"

type processConfig struct{ Endpoint, App, ID, Color string }

// runInstanceProcess is the body of a process started by startProcess: one lifecycle instance
// of the last hop, on the test's etcd. It prints "ready" once started (or "error: ..."), and
// runs until it is killed or its stdin closes (the test process ended). It never goes offline:
// its end is a crash, whose record stays until the lease expires.
//
// The chain test runs the instances it kills in their own process because the reach board is
// process-wide, as it is in production where a process runs one instance: an instance of
// inventory started in the test process would see the test's connections to order (where blue
// is degraded while inventory's blue is missing) as its own, mark itself degraded, and keep
// order's blue degraded in turn.
func runInstanceProcess(env string) int {
	var pc processConfig
	if err := json.Unmarshal([]byte(env), &pc); err != nil {
		fmt.Println("error:", err)
		return 2
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{pc.Endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	inst, err := lifecycle.New(lifecycle.Config{
		Client: cli, App: pc.App, ID: pc.ID, Color: deploy.Color(pc.Color), Warmup: -1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", TTL: 2 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fmt.Println("error:", err)
		return 2
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &hop{id: pc.ID, color: pc.Color})
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	if err := inst.Start(ctx); err != nil {
		fmt.Println("error:", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 2
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// startProcess runs an instance of app in a child process (runInstanceProcess) and returns
// once it is registered and serving; kill ends it as a crash would (SIGKILL). It is killed
// at cleanup if the test has not.
func startProcess(t *testing.T, endpoint, app, id, color string) (kill func()) {
	t.Helper()
	env, _ := json.Marshal(processConfig{Endpoint: endpoint, App: app, ID: id, Color: color})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), instanceProcessEnv+"="+string(env))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = stdin.Close()
		})
	}
	t.Cleanup(kill)
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		s.Scan()
		line <- s.Text()
		_, _ = io.Copy(io.Discard, stdout)
	}()
	if got := testutil.Receive(t, id+"'s process to start", line); got != "ready" {
		t.Fatalf("%s's process: %q", id, got)
	}
	return kill
}

// chainLog is what the entry's callers saw, in the order the calls ended.
type chainLog struct {
	mu     sync.Mutex
	paths  []string // the answer's path, "" for a failed call
	errs   []error  // of failed calls
	failed int
}

func (l *chainLog) add(path string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.paths = append(l.paths, path)
	if err != nil {
		l.failed++
		l.errs = append(l.errs, err)
	}
}

// mark is the number of calls ended so far.
func (l *chainLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.paths)
}

// okInARowSince reports whether the last n calls that ended after mark m all succeeded.
func (l *chainLog) okInARowSince(m, n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	run := 0
	for k := len(l.paths) - 1; k >= m && l.paths[k] != ""; k-- {
		run++
	}
	return run >= n
}

// sawSince reports whether a call that ended after mark m took path.
func (l *chainLog) sawSince(m int, path string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.paths[m:] {
		if p == path {
			return true
		}
	}
	return false
}

func (l *chainLog) failures() (int, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed, append([]error(nil), l.errs...)
}

// Issue 12, case 2, end to end: entry (a plain client with the rule interceptor) → order
// (blue and green, lifecycle) → inventory (blue and green, lifecycle), one channel open at
// 50 % blue, calls flowing. inventory's blue instance crashes (SIGKILL, its record stays until
// its lease expires). Then:
//
//	(a) order's blue instance marks its record degraded within seconds, not a lease TTL;
//	(b) no request ever crosses from order's blue code to inventory's green instance;
//	(c) once it is degraded, the entry re-decides blue calls for green: 100 calls in a row
//	    succeed, and the calls lost are only those caught in the moment before the mark
//	    reached the entry (all UNAVAILABLE, none crossing);
//	(d) a new blue inventory starts: the mark clears, and blue decisions run blue → blue
//	    again, losing nothing.
func TestDeadCanaryDownstreamStopsItsColorAtTheEntry(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	const channel = "chain" // the reach board is process-wide: no other test uses this channel
	openChannel(t, cli, channel, 50, "order", "inventory")
	endpoint := etcd.Endpoints()[0]

	invGreen := &hop{id: "inventory-green", color: "green"}
	startHop(t, cli, "inventory", invGreen)
	killBlue := startProcess(t, endpoint, "inventory", "inventory-blue-1", "blue")
	orderBlue := startHop(t, cli, "order", &hop{id: "order-blue", color: "blue", next: dialApp(t, cli, "inventory")})
	startHop(t, cli, "order", &hop{id: "order-green", color: "green", next: dialApp(t, cli, "inventory")})
	entry := dialApp(t, cli, "order")

	log := &chainLog{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const callers = 4
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				resp, err := entry.SayHello(ctx, &greeterpb.HelloRequest{})
				cancel()
				log.add(resp.GetInstance(), err)
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	testutil.Eventually(t, "calls flowing blue→blue and green→green", func() bool {
		return log.sawSince(0, "order-blue>inventory-blue-1") && log.sawSince(0, "order-green>inventory-green")
	})
	if n, errs := log.failures(); n != 0 {
		t.Fatalf("%d calls failed before the fault: %v", n, errs[0])
	}

	killBlue()
	killed := time.Now()
	// (a) Seconds, not a lease TTL: the connection to the dead instance fails at once.
	const within = 5 * time.Second
	degraded := ""
	if err := testutil.Poll(context.Background(), within, func() bool {
		degraded, _ = degradedOf(t, cli, "order", "order-blue")
		return degraded != ""
	}); err != nil {
		n, _ := log.failures()
		t.Fatalf("order-blue's record not degraded %v after inventory's blue instance died (%d calls failed meanwhile; %d crossed from order-blue to inventory-green)",
			within, n, invGreen.fromBlue.Load())
	}
	tookDegraded := time.Since(killed)
	if want := "no serving blue instance of inventory"; degraded != want || orderBlue.Status().Degraded != want {
		t.Fatalf("order-blue degraded %q (status %q), want %q", degraded, orderBlue.Status().Degraded, want)
	}
	// (c) The entry stops deciding blue for order-blue: 100 calls in a row succeed.
	atDegraded := log.mark()
	testutil.Eventually(t, "100 calls in a row succeeding after order-blue is degraded", func() bool {
		return log.okInARowSince(atDegraded, 100)
	})
	lost, errs := log.failures()
	for _, err := range errs {
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("a call failed with %v; want only UNAVAILABLE (refused rather than crossed)", err)
		}
	}
	t.Logf("inventory's blue instance killed: order-blue degraded after %v; %d calls lost (%d callers)",
		tookDegraded.Round(time.Millisecond), lost, callers)
	for _, err := range errs {
		t.Logf("lost: %v", err)
	}
	// The loss is what was under way while the mark traveled: a few calls per caller.
	if lost > 25*callers {
		t.Fatalf("%d calls lost after inventory's blue instance died; want at most %d (what %d callers have under way while the mark travels)", lost, 25*callers, callers)
	}

	// (d) A new blue inventory: the mark clears and blue decisions go blue all the way again.
	atRestart := log.mark()
	startProcess(t, endpoint, "inventory", "inventory-blue-2", "blue")
	waitDegraded(t, cli, orderBlue, "order", "order-blue", "")
	testutil.Eventually(t, "a blue-decided call running order-blue → inventory-blue-2", func() bool {
		return log.sawSince(atRestart, "order-blue>inventory-blue-2")
	})
	atBack := log.mark()
	testutil.Eventually(t, "100 calls in a row succeeding after blue came back", func() bool { return log.okInARowSince(atBack, 100) })
	if n, _ := log.failures(); n != lost {
		t.Fatalf("%d calls failed while blue came back; want 0", n-lost)
	}
	// (b) Throughout, no request went from order's blue code to inventory's green instance.
	if n := invGreen.fromBlue.Load(); n != 0 {
		t.Fatalf("inventory-green served %d requests from order-blue; new code must never call old code", n)
	}
}

// startHop starts an instance of app through lifecycle in this process, serving h.
func startHop(t *testing.T, cli *clientv3.Client, app string, h *hop) *lifecycle.Instance {
	t.Helper()
	inst, err := lifecycle.New(config(t, cli, h.id, func(c *lifecycle.Config) { c.App, c.Color = app, deploy.Color(h.color) }))
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), h)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return inst
}

// dialApp is a greeter client of switchyard:///app with its own rule client: it decides and
// carries sticky decisions.
func dialApp(t *testing.T, cli *clientv3.Client, app string) greeterpb.GreeterClient {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rules := rulesClient(t, cli)
	return testutil.Greeter(t, "switchyard:///"+app, grpc.WithResolvers(rb), grpc.WithChainUnaryInterceptor(rules.UnaryClientInterceptor()))
}
