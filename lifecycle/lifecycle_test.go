package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestMain(m *testing.M) {
	// os/signal starts one goroutine for the life of the process on first use.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("os/signal.loop"))
}

var silent = slog.New(slog.NewTextHandler(io.Discard, nil))

// greeter counts the calls it serves and when; SayHellos streams `count` replies 100 ms apart.
type greeter struct {
	greeterpb.UnimplementedGreeterServer
	id     string
	mu     sync.Mutex
	served []time.Time
}

func (g *greeter) SayHello(context.Context, *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	g.mu.Lock()
	g.served = append(g.served, time.Now())
	g.mu.Unlock()
	return &greeterpb.HelloReply{Instance: g.id}, nil
}

func (g *greeter) SayHellos(req *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	for k := int32(0); k < req.GetCount(); k++ {
		time.Sleep(100 * time.Millisecond)
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

func config(cli *clientv3.Client, id string, mod ...func(*lifecycle.Config)) lifecycle.Config {
	cfg := lifecycle.Config{
		Client: cli, App: "greeter", ID: id, Warmup: -1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 200 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 3 * time.Second,
		TTL: 2 * time.Second, Logger: silent,
	}
	for _, m := range mod {
		m(&cfg)
	}
	return cfg
}

// start builds, starts and (at cleanup) stops an instance serving a greeter.
func start(t *testing.T, cli *clientv3.Client, id string, mod ...func(*lifecycle.Config)) (*lifecycle.Instance, *greeter) {
	t.Helper()
	inst, err := lifecycle.New(config(cli, id, mod...))
	if err != nil {
		t.Fatal(err)
	}
	g := &greeter{id: id}
	greeterpb.RegisterGreeterServer(inst.Server(), g)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return inst, g
}

func dial(t *testing.T, cli *clientv3.Client) greeterpb.GreeterClient {
	t.Helper()
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("switchyard:///greeter", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return greeterpb.NewGreeterClient(cc)
}

func call(c greeterpb.GreeterClient, wait bool) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(wait))
	return resp.GetInstance(), err
}

func TestOfflineUnderLoadLosesNothing(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	a, ga := start(t, cli, "a")
	start(t, cli, "b")
	start(t, cli, "c")

	// 6 client connections, one caller each, calling continuously.
	const conns = 6
	var failed atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for k := 0; k < conns; k++ {
		c := dial(t, cli)
		if _, err := call(c, true); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := call(c, false); err != nil {
					failed.Add(1)
					failures.Store(err.Error(), true)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	began := time.Now()
	if err := a.Offline(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	after := ga.servedSince(began)
	t.Logf("offline took %v; instance a served %d requests after its offline began (%d client connections)", took.Round(time.Millisecond), after, conns)
	if n := failed.Load(); n != 0 {
		failures.Range(func(k, _ any) bool { t.Log("failure:", k); return true })
		t.Fatalf("%d calls failed while an instance went offline", n)
	}
	if after > conns {
		t.Fatalf("a served %d requests after offline began; at most one per client connection (%d) may reach it", after, conns)
	}
	if a.State() != lifecycle.StateStopped {
		t.Fatalf("state %s", a.State())
	}
	if resp, _ := cli.Get(context.Background(), "/switchyard/services/greeter/a"); len(resp.Kvs) != 0 {
		t.Fatal("a is still registered")
	}
}

func TestSIGTERMTakesTheInstanceOffline(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	inst, err := lifecycle.New(config(cli, "a"))
	if err != nil {
		t.Fatal(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &greeter{id: "a"})
	done := make(chan error, 1)
	go func() { done <- inst.Run(context.Background()) }()
	for inst.State() != lifecycle.StateServing {
		time.Sleep(10 * time.Millisecond)
	}
	// Run catches the signal itself (signal.NotifyContext), so the test process lives on.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after SIGTERM")
	}
	if inst.State() != lifecycle.StateStopped {
		t.Fatalf("state %s after SIGTERM", inst.State())
	}
	if resp, _ := cli.Get(context.Background(), "/switchyard/services/greeter/a"); len(resp.Kvs) != 0 {
		t.Fatal("still registered after SIGTERM")
	}
}

func TestNoRegistrationAndNoRPCBeforeReadiness(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	var ready atomic.Bool
	inst, err := lifecycle.New(config(cli, "a", func(c *lifecycle.Config) {
		c.Checks = []registry.Check{{Name: "cache", Func: func(context.Context) error {
			if !ready.Load() {
				return errors.New("cache loading")
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
	started := make(chan error, 1)
	go func() { started <- inst.Start(context.Background()) }()
	for inst.AdminAddr() == "" || inst.State() != lifecycle.StateStarting {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // well into the readiness checks

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

	ready.Store(true)
	if err := <-started; err != nil {
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
	cli := etcdtest.Start(t).Client(t)
	a, _ := start(t, cli, "a")
	client := dial(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.SayHellos(ctx, &greeterpb.HelloRequest{Count: 20}, grpc.WaitForReady(true)) // 2 s
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	offline := make(chan error, 1)
	go func() { offline <- a.Offline(context.Background()) }()
	select {
	case <-a.GoingOffline():
	case <-time.After(5 * time.Second):
		t.Fatal("GoingOffline was not closed when the drain began")
	}
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
	for k := 0; k < 50; k++ {
		if id, err := call(client, false); err != nil || id == "a" {
			t.Fatalf("drained a still picked or call failed: %q %v", id, err)
		}
	}
	if c := httpDo(t, a, http.MethodPost, "/online", ""); c != http.StatusOK {
		t.Fatalf("POST /online: %d", c)
	}
	if c := httpDo(t, a, http.MethodPost, "/online", ""); c != http.StatusConflict {
		t.Fatalf("POST /online on a serving instance: %d, want 409", c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if id, _ := call(client, false); id == "a" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a gets no calls after /online")
		}
	}
}

func TestOfflineRefusesWrongTokens(t *testing.T) {
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
	cli := etcdtest.Start(t).Client(t)
	start(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color = registry.ColorBlue })
	start(t, cli, "green-1", func(c *lifecycle.Config) { c.Color = registry.ColorGreen })
	ctl, err := traffic.NewController(traffic.Config{Client: cli})
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
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, _ := cli.Get(ctx, "/switchyard/services/greeter/blue-1")
		if len(resp.Kvs) == 1 {
			if in, err := registry.Unmarshal(resp.Kvs[0].Value); err == nil && in.Channel == "trade" && in.TrafficWeight == blueW {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("blue-1 did not re-put its traffic weight for 10 %")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the consumer's watch
	client := dial(t, cli)
	blue := 0
	for k := 0; k < 2000; k++ {
		id, err := call(client, true)
		if err != nil {
			t.Fatal(err)
		}
		if id == "blue-1" {
			blue++
		}
	}
	t.Logf("at 10%% blue: %d of 2000 calls went to blue", blue)
	if blue < 180 || blue > 220 {
		t.Fatalf("blue got %d of 2000 calls at 10%%, want 200 ±20", blue)
	}
	// Finish: back to 100, channel "".
	if _, err := ctl.Finish(ctx, "trade"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		resp, _ := cli.Get(ctx, "/switchyard/services/greeter/blue-1")
		if in, err := registry.Unmarshal(resp.Kvs[0].Value); err == nil && in.Channel == "" && in.TrafficWeight == 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("blue-1 did not go back to traffic weight 100 after Finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
