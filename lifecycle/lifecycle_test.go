package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestMain(m *testing.M) {
	if env := os.Getenv(instanceProcessEnv); env != "" {
		os.Exit(runInstanceProcess(env)) // a child process of the chain test
	}
	// os/signal starts one goroutine for the life of the process on first use.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("os/signal.loop"))
}

// greeter counts the calls it serves and when. SayHellos streams `count` replies: the first
// at once, the rest when the test closes release.
type greeter struct {
	greeterpb.UnimplementedGreeterServer
	id      string
	release chan struct{}
	mu      sync.Mutex
	served  []time.Time
}

func (g *greeter) SayHello(context.Context, *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	g.mu.Lock()
	g.served = append(g.served, time.Now())
	g.mu.Unlock()
	return &greeterpb.HelloReply{Instance: g.id}, nil
}

func (g *greeter) SayHellos(req *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	for k := int32(0); k < req.GetCount(); k++ {
		if k == 1 {
			select {
			case <-g.release:
			case <-st.Context().Done():
				return st.Context().Err()
			}
		}
		if err := st.Send(&greeterpb.HelloReply{Instance: g.id, Message: fmt.Sprint(k)}); err != nil {
			return err
		}
	}
	return nil
}

func (g *greeter) servedSince(t time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, s := range g.served {
		if !s.Before(t) {
			n++
		}
	}
	return n
}

func config(t testing.TB, cli *clientv3.Client, id string, mod ...func(*lifecycle.Config)) lifecycle.Config {
	cfg := lifecycle.Config{
		Client: cli, App: "greeter", ID: id, Warmup: -1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 200 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 3 * time.Second,
		TTL: 2 * time.Second, Logger: testutil.Logger(t),
	}
	for _, m := range mod {
		m(&cfg)
	}
	return cfg
}

// start builds, starts and (at cleanup) stops an instance serving a greeter.
func start(t testing.TB, cli *clientv3.Client, id string, mod ...func(*lifecycle.Config)) (*lifecycle.Instance, *greeter) {
	t.Helper()
	inst, err := lifecycle.New(config(t, cli, id, mod...))
	if err != nil {
		t.Fatal(err)
	}
	g := &greeter{id: id, release: make(chan struct{})}
	greeterpb.RegisterGreeterServer(inst.Server(), g)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return inst, g
}

// dial is a greeter client of switchyard:///greeter.
func dial(t testing.TB, cli *clientv3.Client) greeterpb.GreeterClient {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return testutil.Greeter(t, "switchyard:///greeter", grpc.WithResolvers(rb))
}

// callsOn makes n calls (waiting for ready) and returns how many the instance id answered;
// any failed call fails t.
func callsOn(t *testing.T, c greeterpb.GreeterClient, n int, id string) int {
	t.Helper()
	on := 0
	for range n {
		got, err := call(c, true)
		if err != nil {
			t.Fatal(err)
		}
		if got == id {
			on++
		}
	}
	return on
}

func call(c greeterpb.GreeterClient, wait bool) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(wait))
	return resp.GetInstance(), err
}

func TestOfflineUnderLoadLosesNothing(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	a, ga := start(t, cli, "a")
	start(t, cli, "b")
	start(t, cli, "c")

	// 6 client connections, one caller each, calling continuously.
	const conns = 6
	var failed atomic.Int64
	var failures sync.Map
	var made [conns]atomic.Int64 // calls made on each connection
	// afterFlag[k]: calls on connection k that reached a after a's first flagged answer on it
	// (written by connection k's goroutine only, read after wg.Wait).
	var afterFlag [conns]int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	loadBegan := time.Now()
	for k := 0; k < conns; k++ {
		c := dial(t, cli)
		if _, err := call(c, true); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			flagged := false
			for n := 0; n < 100_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				var trailer metadata.MD
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.Trailer(&trailer))
				cancel()
				if err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
				}
				if resp.GetInstance() == "a" {
					if flagged {
						afterFlag[k]++
					}
					flagged = flagged || len(trailer.Get(deploy.OfflineHeader)) > 0
				}
				made[k].Add(1)
			}
		}()
	}
	// everyMadeMore reports whether every connection made n calls more than in since.
	everyMadeMore := func(since *[conns]int64, n int64) bool {
		for k := range made {
			if made[k].Load() < since[k]+n {
				return false
			}
		}
		return true
	}
	var zero [conns]int64
	testutil.Eventually(t, "every connection calling and instance a serving the load", func() bool {
		return everyMadeMore(&zero, 20) && ga.servedSince(loadBegan) > conns
	})
	began := time.Now()
	if err := a.Offline(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	// The load goes on without a: every connection makes 20 more calls, none may fail.
	var atOffline [conns]int64
	for k := range made {
		atOffline[k] = made[k].Load()
	}
	testutil.Eventually(t, "20 more calls on every connection after the offline", func() bool { return everyMadeMore(&atOffline, 20) })
	close(stop)
	wg.Wait()

	after := ga.servedSince(began)
	t.Logf("offline took %v; instance a served %d requests after its offline began (%d client connections)", took.Round(time.Millisecond), after, conns)
	if n := failed.Load(); n != 0 {
		failures.Range(func(k, _ any) bool { t.Log("failure:", k); return true })
		t.Fatalf("%d calls failed while an instance went offline", n)
	}
	// The promise: a's first flagged answer takes it out of that connection's picker at once.
	// (Counting from when Offline was called instead would also count requests served
	// in the moment before the flag went on, unflagged, which is allowed.)
	for k, n := range afterFlag {
		if n != 0 {
			t.Fatalf("connection %d sent %d calls to a after a's first answer flagged offline; want 0", k, n)
		}
	}
	if a.State() != lifecycle.StateStopped {
		t.Fatalf("state %s", a.State())
	}
	if resp, _ := cli.Get(context.Background(), "/switchyard/services/greeter/a"); len(resp.Kvs) != 0 {
		t.Fatal("a is still registered")
	}
}

// Not parallel: it signals the whole test process, and every running Run would take it.
// Sequential tests finish before any parallel one resumes.
func TestSIGTERMTakesTheInstanceOffline(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	inst, err := lifecycle.New(config(t, cli, "a"))
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &greeter{id: "a"})
	done := make(chan error, 1)
	go func() { done <- inst.Run(context.Background()) }()
	testutil.Eventually(t, "the instance serving", func() bool { return inst.State() == lifecycle.StateServing })
	// Run catches the signal itself (signal.NotifyContext), so the test process lives on.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Receive(t, "Run to return after SIGTERM", done); err != nil {
		t.Fatalf("Run after SIGTERM: %v", err)
	}
	if inst.State() != lifecycle.StateStopped {
		t.Fatalf("state %s after SIGTERM", inst.State())
	}
	if resp, _ := cli.Get(context.Background(), "/switchyard/services/greeter/a"); len(resp.Kvs) != 0 {
		t.Fatal("still registered after SIGTERM")
	}
}

func TestNoRegistrationAndNoRPCBeforeReadiness(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	// The check fails its first round; its second round tells the test (retried) and waits
	// for it (ready) before it passes. In between, the instance is well into its checks.
	var rounds atomic.Int32
	retried, ready := make(chan struct{}), make(chan struct{})
	var readyOnce sync.Once
	setReady := func() { readyOnce.Do(func() { close(ready) }) }
	inst, err := lifecycle.New(config(t, cli, "a", func(c *lifecycle.Config) {
		c.Checks = []registry.Check{{Name: "cache", Func: func(ctx context.Context) error {
			switch rounds.Add(1) {
			case 1:
				return errors.New("cache loading")
			case 2:
				close(retried)
				select {
				case <-ready:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	g := &greeter{id: "a"}
	greeterpb.RegisterGreeterServer(inst.Server(), g)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	t.Cleanup(setReady) // before Offline, which waits for Start
	started := make(chan error, 1)
	go func() { started <- inst.Start(context.Background()) }()
	waitClosed(t, "the readiness check's second round", retried)

	client := dial(t, cli)
	if _, err := call(client, false); err == nil {
		t.Fatal("an RPC got through before the readiness checks passed")
	}
	if resp, _ := cli.Get(context.Background(), "/switchyard/services/greeter/a"); len(resp.Kvs) != 0 {
		t.Fatal("registered before the readiness checks passed")
	}
	if code := httpGet(t, inst, "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz/ready = %d before readiness, want 503", code)
	}
	if code := httpGet(t, inst, "/healthz/live"); code != http.StatusOK {
		t.Fatalf("/healthz/live = %d, want 200", code)
	}
	if n := g.servedSince(time.Time{}); n != 0 {
		t.Fatalf("served %d RPCs before readiness", n)
	}

	setReady()
	if err := testutil.Receive(t, "Start to return once the check passed", started); err != nil {
		t.Fatal(err)
	}
	if id, err := call(client, true); err != nil || id != "a" {
		t.Fatalf("after readiness: %q %v", id, err)
	}
	if code := httpGet(t, inst, "/healthz/ready"); code != http.StatusOK {
		t.Fatalf("/healthz/ready = %d once serving, want 200", code)
	}
}

func TestLongStreamInFlightCompletes(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	// The drain may wait for the stream as long as the test needs.
	a, ga := start(t, cli, "a", func(c *lifecycle.Config) { c.MaxDrain = testutil.Deadline })
	client := dial(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	st, err := client.SayHellos(ctx, &greeterpb.HelloRequest{Count: 20}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	offline := make(chan error, 1)
	go func() { offline <- a.Offline(context.Background()) }()
	waitClosed(t, "GoingOffline to close when the drain begins", a.GoingOffline())
	// The stream is in flight, so the drain waits for it: the other 19 messages are sent
	// while the instance is draining.
	if s := a.State(); s != lifecycle.StateDraining {
		t.Fatalf("state %s while a stream is in flight, want draining", s)
	}
	close(ga.release)
	got := 1
	for {
		_, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream cut after %d of 20 messages: %v", got, err)
		}
		got++
	}
	if got != 20 {
		t.Fatalf("stream got %d of 20 messages", got)
	}
	if err := <-offline; err != nil {
		t.Fatal(err)
	}
}

func httpDo(t *testing.T, inst *lifecycle.Instance, method, path, token string) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+inst.AdminAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func httpGet(t *testing.T, inst *lifecycle.Instance, path string) int {
	return httpDo(t, inst, http.MethodGet, path, "")
}

func TestRepeatedAndConcurrentOfflineThenOnline(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	a, _ := start(t, cli, "a")
	start(t, cli, "b")
	client := dial(t, cli)
	if _, err := call(client, true); err != nil {
		t.Fatal(err)
	}
	codes := make(chan int, 5)
	for k := 0; k < 5; k++ {
		go func() { codes <- httpDo(t, a, http.MethodPost, "/offline", "") }()
	}
	for k := 0; k < 5; k++ {
		if c := <-codes; c != http.StatusOK {
			t.Fatalf("concurrent POST /offline: %d", c)
		}
	}
	if c := httpDo(t, a, http.MethodPost, "/offline", ""); c != http.StatusOK {
		t.Fatalf("repeated POST /offline: %d", c)
	}
	if a.State() != lifecycle.StateDrained || httpGet(t, a, "/healthz/ready") != http.StatusServiceUnavailable {
		t.Fatalf("after /offline: state %s", a.State())
	}
	// The consumer learns of the drain from its registry watch or from a's offline flag on a
	// call that still reached it (a serves what reaches it): wait until it has (20 calls in a
	// row to b; a in the picker would get about half), then a is never picked again.
	testutil.Eventually(t, "the consumer to stop picking drained a", func() bool {
		for range 20 {
			id, err := call(client, false)
			if err != nil {
				t.Fatalf("a call failed after the drain: %v", err)
			}
			if id == "a" {
				return false
			}
		}
		return true
	})
	for k := 0; k < 50; k++ {
		if id, err := call(client, false); err != nil || id == "a" {
			t.Fatalf("drained a picked again once the consumer had seen the drain, or a call failed: %q %v", id, err)
		}
	}
	if c := httpDo(t, a, http.MethodPost, "/online", ""); c != http.StatusOK {
		t.Fatalf("POST /online: %d", c)
	}
	if c := httpDo(t, a, http.MethodPost, "/online", ""); c != http.StatusConflict {
		t.Fatalf("POST /online on a serving instance: %d, want 409", c)
	}
	testutil.Eventually(t, "a getting calls after /online", func() bool { id, _ := call(client, false); return id == "a" })
}

func TestOfflineRefusesWrongTokens(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	a, _ := start(t, cli, "a", func(c *lifecycle.Config) { c.AdminToken = "s3cret" })
	for _, tok := range []string{"", "wrong"} {
		if c := httpDo(t, a, http.MethodPost, "/offline", tok); c != http.StatusForbidden {
			t.Fatalf("POST /offline with token %q: %d, want 403", tok, c)
		}
	}
	if a.State() != lifecycle.StateServing {
		t.Fatalf("a refused /offline changed the state to %s", a.State())
	}
	if c := httpDo(t, a, http.MethodPost, "/offline", "s3cret"); c != http.StatusOK {
		t.Fatalf("POST /offline with the token: %d", c)
	}
	if c := httpDo(t, a, http.MethodGet, "/offline", "s3cret"); c != http.StatusMethodNotAllowed {
		t.Fatalf("GET /offline: %d, want 405", c)
	}
}

func TestChannelShiftRePutsTrafficWeightAndTheSplitFollows(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	start(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color = deploy.Blue })
	start(t, cli, "green-1", func(c *lifecycle.Config) { c.Color = deploy.Green })
	ctl, err := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"greeter"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(ctx, "trade", 10); err != nil {
		t.Fatal(err)
	}
	blueW, _ := traffic.Weights(10)
	// Both records as the rule says, so the consumer dialed next starts from them.
	waitRecord(t, cli, "blue-1", "trade", blueW)
	waitRecord(t, cli, "green-1", "trade", 100)
	client := dial(t, cli)
	// The consumer's picker has both instances once calls land on both.
	seen := map[string]bool{}
	testutil.Eventually(t, "calls landing on blue-1 and green-1", func() bool {
		id, err := call(client, true)
		if err != nil {
			t.Fatal(err)
		}
		seen[id] = true
		return seen["blue-1"] && seen["green-1"]
	})
	// The picker spreads picks evenly (a Weyl sequence), so 500 calls land within a few of
	// their shares.
	const calls = 500
	blue := callsOn(t, client, calls, "blue-1")
	t.Logf("at 10%% blue: %d of %d calls went to blue", blue, calls)
	if blue < 45 || blue > 55 {
		t.Fatalf("blue got %d of %d calls at 10%%, want 50 ±5 (1 pp)", blue, calls)
	}
	// Finish: back to 100, channel "".
	if _, err := ctl.Finish(ctx, "trade"); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, cli, "blue-1", "", 100)
}

// waitRecord waits until instance id's record in etcd has channel and traffic weight tw.
func waitRecord(t *testing.T, cli *clientv3.Client, id, channel string, tw float64) {
	t.Helper()
	testutil.Eventually(t, fmt.Sprintf("%s's record at channel %q, traffic weight %v", id, channel, tw), func() bool {
		resp, err := cli.Get(context.Background(), "/switchyard/services/greeter/"+id)
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		in, err := registry.Unmarshal(resp.Kvs[0].Value)
		return err == nil && in.Channel == channel && in.TrafficWeight == tw
	})
}

// waitClosed waits until ch is closed.
func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	testutil.Eventually(t, what, func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	})
}

// A connection to the admin server that never sent a request (a probe's or a preStop hook's
// fresh connection) must not outlive Offline: http.Server.Shutdown leaves such connections
// open until they are 5 s old, so Offline closes whatever Shutdown left.
func TestOfflineClosesEveryAdminConnection(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	a, _ := start(t, cli, "a")
	conn, err := net.Dial("tcp", a.AdminAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server has accepted it once a request on another connection is answered after it.
	if c := httpGet(t, a, "/healthz/live"); c != http.StatusOK {
		t.Fatalf("/healthz/live: %d", c)
	}
	if err := a.Offline(context.Background()); err != nil {
		t.Fatalf("Offline: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(testutil.Deadline))
	if n, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("after Offline the admin connection is still open (read %d bytes, %v); want it closed", n, err)
	}
}

// Two instances of an app on one host, neither given an ID, must not share one: the default
// is the host name plus the gRPC port (or the process id when the port is chosen at listen
// time), and registry refuses a second live instance with the same id.
func TestDefaultIDsDoNotClashOnOneHost(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no host name here: %v", err)
	}
	ids := map[string]string{}
	for _, listen := range []string{"127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:0"} {
		inst, err := lifecycle.New(lifecycle.Config{Client: cli, App: "greeter", ListenAddr: listen, Logger: testutil.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ids[listen] = inst.Status().ID
	}
	want := map[string]string{
		"127.0.0.1:9101": host + "-9101",
		"127.0.0.1:9102": host + "-9102",
		"127.0.0.1:0":    fmt.Sprintf("%s-%d", host, os.Getpid()),
	}
	for listen, id := range ids {
		if id != want[listen] {
			t.Errorf("ListenAddr %s: default ID %q, want %q", listen, id, want[listen])
		}
	}
}
