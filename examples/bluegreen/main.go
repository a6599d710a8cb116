// Command bluegreen performs a whole blue/green release of channel "trade" (apps order and
// inventory) under load, in one process on an embedded etcd, and shows that no request fails
// and none that entered v2 code meets v1 code further down:
//
//	gateway → order → inventory      each of order and inventory: one blue, one green instance
//
// v2 order calls a method that only v2 inventory has (SayHellos); a v2 order meeting a v1
// inventory would fail with Unimplemented, which the demo counts as a sticky violation.
//
//	go run ./examples/bluegreen            # ~30 s
//	go run ./examples/bluegreen -phase 500ms
//	go run ./examples/bluegreen -naive     # first the same release done naively, for comparison
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func main() {
	phase := flag.Duration("phase", 3*time.Second, "how long each phase of the release runs under load")
	workers := flag.Int("workers", 8, "concurrent callers of the gateway (closed loop)")
	naive := flag.Bool("naive", false, "first do the same release as a plain rolling restart (round_robin, no switchyard lifecycle), for comparison")
	flag.Parse()
	if *naive {
		failed, total, err := runNaive(os.Stdout, *phase, *workers)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bluegreen -naive:", err)
			os.Exit(2)
		}
		fmt.Printf("naive rolling restart: %d of %d requests failed\n\nnow the same release with switchyard:\n\n", failed, total)
	}
	ok, err := run(os.Stdout, *phase, *workers)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bluegreen:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// demo is the running system: etcd, the rule client the instances' clients use, and the
// instances by app and color.
type demo struct {
	cli   *clientv3.Client
	rules *traffic.Client
	log   *slog.Logger
	mu    sync.Mutex
	insts map[string]*lifecycle.Instance // "order/blue" → instance
}

// server is one instance of gateway, order or inventory.
type server struct {
	greeterpb.UnimplementedGreeterServer
	app, color, version string
	next                greeterpb.GreeterClient // nil for inventory
}

func (s *server) label() string { return s.app + "@" + s.color + "/" + s.version }

// SayHello: inventory answers; order asks inventory (v2 order through the v2-only method);
// gateway asks order.
func (s *server) SayHello(ctx context.Context, _ *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	if s.next == nil {
		return &greeterpb.HelloReply{Message: s.label()}, nil
	}
	if s.app == "order" && s.version == "v2" {
		st, err := s.next.SayHellos(ctx, &greeterpb.HelloRequest{Count: 1})
		if err != nil {
			return nil, err
		}
		r, err := st.Recv()
		if err != nil {
			return nil, err
		}
		return &greeterpb.HelloReply{Message: s.label() + " > " + r.GetMessage()}, nil
	}
	r, err := s.next.SayHello(ctx, &greeterpb.HelloRequest{})
	if err != nil {
		return nil, err
	}
	return &greeterpb.HelloReply{Message: s.label() + " > " + r.GetMessage()}, nil
}

// SayHellos exists only in v2 inventory.
func (s *server) SayHellos(_ *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	if s.app != "inventory" || s.version != "v2" {
		return status.Error(codes.Unimplemented, s.label()+" has no SayHellos")
	}
	return st.Send(&greeterpb.HelloReply{Message: s.label()})
}

// dial is a client of app with switchyard's resolver, balancer and sticky interceptors.
func (d *demo) dial(app string) (*grpc.ClientConn, error) {
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: d.cli, Logger: d.log})
	if err != nil {
		return nil, err
	}
	return grpc.NewClient("switchyard:///"+app, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(d.rules.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(d.rules.StreamClientInterceptor()))
}

// start runs one instance of app, of color and version, through lifecycle.
func (d *demo) start(ctx context.Context, app, color, version string, next *grpc.ClientConn) error {
	inst, err := lifecycle.New(lifecycle.Config{
		Client: d.cli, App: app, ID: app + "-" + color + "-" + version, Color: registry.Color(color), Version: version,
		Warmup: 500 * time.Millisecond, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 300 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 5 * time.Second, Logger: d.log,
	})
	if err != nil {
		return err
	}
	s := &server{app: app, color: color, version: version}
	if next != nil {
		s.next = greeterpb.NewGreeterClient(next)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), s)
	if err := inst.Start(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.insts[app+"/"+color] = inst
	d.mu.Unlock()
	return nil
}

// stop takes the instance of app and color offline, losslessly.
func (d *demo) stop(ctx context.Context, app, color string) error {
	d.mu.Lock()
	inst := d.insts[app+"/"+color]
	delete(d.insts, app+"/"+color)
	d.mu.Unlock()
	return inst.Offline(ctx)
}

// stats counts one phase's calls.
type stats struct {
	mu         sync.Mutex
	n, failed  int
	violations int
	byColor    map[string]int
	lat        []time.Duration
	firstErr   error
}

func (s *stats) add(reply string, err error, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	s.lat = append(s.lat, d)
	if err != nil {
		s.failed++
		if status.Code(err) == codes.Unimplemented {
			s.violations++ // a v2 order met a v1 inventory
		}
		if s.firstErr == nil {
			s.firstErr = err
		}
		return
	}
	// "gateway@/v1 > order@blue/v2 > inventory@blue/v2": count the order's color; a v2
	// order above a v1 inventory would be a violation (it cannot answer, see above).
	parts := strings.Split(reply, " > ")
	if len(parts) == 3 {
		s.byColor[strings.Split(strings.TrimPrefix(parts[1], "order@"), "/")[0]]++
		if strings.HasSuffix(parts[1], "/v2") && strings.HasSuffix(parts[2], "/v1") {
			s.violations++
		}
	}
}

func (s *stats) row(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	slices.Sort(s.lat)
	pct := func(p float64) time.Duration {
		if len(s.lat) == 0 {
			return 0
		}
		return s.lat[int(p*float64(len(s.lat)-1))]
	}
	ok := s.n - s.failed
	share := func(c string) float64 {
		if ok == 0 {
			return 0
		}
		return 100 * float64(s.byColor[c]) / float64(ok)
	}
	return fmt.Sprintf("%-34s %8d %7d %7.1f%% %7.1f%% %10d %9v %9v", name, s.n, s.failed, share("blue"), share("green"),
		s.violations, pct(0.5).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond))
}

func run(out io.Writer, phase time.Duration, workers int) (bool, error) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	etcd, err := etcdtest.New() // in production: your etcd cluster
	if err != nil {
		return false, err
	}
	defer etcd.Close()
	cli, err := etcd.NewClient(etcd.Endpoints())
	if err != nil {
		return false, err
	}
	defer cli.Close()
	rules, err := traffic.NewClient(ctx, traffic.Config{Client: cli, Logger: log})
	if err != nil {
		return false, err
	}
	defer rules.Close()
	ctl, err := traffic.NewController(traffic.Config{Client: cli})
	if err != nil {
		return false, err
	}
	d := &demo{cli: cli, rules: rules, log: log, insts: map[string]*lifecycle.Instance{}}
	defer func() {
		for key := range d.insts {
			app, color, _ := strings.Cut(key, "/")
			_ = d.stop(ctx, app, color)
		}
	}()

	toInventory, err := d.dial("inventory")
	if err != nil {
		return false, err
	}
	defer toInventory.Close()
	toOrder, err := d.dial("order")
	if err != nil {
		return false, err
	}
	defer toOrder.Close()
	toGateway, err := d.dial("gateway")
	if err != nil {
		return false, err
	}
	defer toGateway.Close()
	for _, c := range []string{"blue", "green"} {
		if err := d.start(ctx, "inventory", c, "v1", nil); err != nil {
			return false, err
		}
		if err := d.start(ctx, "order", c, "v1", toInventory); err != nil {
			return false, err
		}
	}
	if err := d.start(ctx, "gateway", "", "v1", toOrder); err != nil {
		return false, err
	}
	gateway := greeterpb.NewGreeterClient(toGateway)
	if _, err := gateway.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		return false, err
	}

	l := startLoad(ctx, gateway, workers)
	defer l.close()

	restart := func(color string) error {
		for _, app := range []string{"order", "inventory"} { // callers first, then callees
			if err := d.stop(ctx, app, color); err != nil {
				return fmt.Errorf("stop %s/%s: %w", app, color, err)
			}
		}
		if err := d.start(ctx, "inventory", color, "v2", nil); err != nil {
			return err
		}
		return d.start(ctx, "order", color, "v2", toInventory)
	}
	shift := func(p float64) func() error {
		return func() error { _, err := ctl.Shift(ctx, "trade", p); return err }
	}
	phases := []step{
		{"all v1, no release", func() error { return nil }},
		{"open trade (order, inventory)", func() error { _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); return err }},
		{"drain blue (0 %)", shift(0)},
		{"restart blue as v2", func() error { return restart("blue") }},
		{"canary 1 % on blue v2", shift(1)},
		{"10 %", shift(10)},
		{"50 %", shift(50)},
		{"100 % (green drained)", shift(100)},
		{"restart green as v2", func() error { return restart("green") }},
		{"finish (all v2, 50/50)", func() error { _, err := ctl.Finish(ctx, "trade"); return err }},
	}
	var total stats
	if err := l.run(out, phase, phases, &total); err != nil {
		return false, err
	}
	ok := total.failed == 0 && total.violations == 0
	verdict := "LOSSLESS"
	if !ok {
		verdict = "NOT LOSSLESS"
	}
	fmt.Fprintf(out, "\nverdict: %s — %d requests, %d failed, %d sticky violations\n", verdict, total.n, total.failed, total.violations)
	return ok, nil
}

type step struct {
	name string
	do   func() error
}

// load is the closed-loop callers of the gateway, counting into the current phase's stats.
type load struct {
	cur  atomic.Pointer[stats]
	stop chan struct{}
	wg   sync.WaitGroup
}

func startLoad(ctx context.Context, gateway greeterpb.GreeterClient, workers int) *load {
	l := &load{stop: make(chan struct{})}
	l.cur.Store(newStats())
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				begin := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := gateway.SayHello(cctx, &greeterpb.HelloRequest{})
				cancel()
				l.cur.Load().add(resp.GetMessage(), err, time.Since(begin))
			}
		}()
	}
	return l
}

func (l *load) close() { close(l.stop); l.wg.Wait() }

// run performs the steps, each followed by one phase of load, printing a row per step.
func (l *load) run(out io.Writer, phase time.Duration, steps []step, total *stats) error {
	fmt.Fprintf(out, "%-34s %8s %7s %8s %8s %10s %9s %9s\n", "phase", "requests", "failed", "blue", "green", "violations", "p50", "p99")
	for _, st := range steps {
		s := newStats()
		l.cur.Store(s)
		if err := st.do(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		time.Sleep(phase)
		l.cur.Store(newStats()) // calls from now on count nowhere
		fmt.Fprintln(out, s.row(st.name))
		if s.firstErr != nil {
			fmt.Fprintln(out, "   first failure:", s.firstErr)
		}
		total.n += s.n
		total.failed += s.failed
		total.violations += s.violations
	}
	return nil
}

func newStats() *stats { return &stats{byColor: map[string]int{}} }
