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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/natstest"
	"github.com/switchyard-go/switchyard/job"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/natsjs"
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
	cli     *clientv3.Client
	rules   *traffic.Client
	log     *slog.Logger
	nats    *natstest.Server
	work    *workLog
	mu      sync.Mutex
	insts   map[string]*lifecycle.Instance // "order/blue" → instance
	closers map[string]func()              // what closes its components' connections
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
	id := app + "-" + color + "-" + version
	comps, closeComps, err := d.components(app, id, color)
	if err != nil {
		return err
	}
	inst, err := lifecycle.New(lifecycle.Config{
		Client: d.cli, App: app, ID: id, Color: registry.Color(color), Version: version,
		Warmup: 500 * time.Millisecond, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 300 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 5 * time.Second, Logger: d.log,
		Components: comps,
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
	d.closers[app+"/"+color] = closeComps
	d.mu.Unlock()
	return nil
}

// components are what an instance runs besides RPCs: order instances consume "orders.events"
// in group "audit"; inventory instances run the sharded job "reconcile" (4 items, every 100 ms).
func (d *demo) components(app, id, color string) ([]lifecycle.Component, func(), error) {
	switch app {
	case "order":
		nc, err := nats.Connect(d.nats.URL(), nats.MaxReconnects(-1))
		if err != nil {
			return nil, nil, err
		}
		b, err := natsjs.New(nc, natsjs.Options{})
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "orders.events", Group: "audit", Logger: d.log,
			Handler: func(context.Context, mq.Message) error { d.work.add("mq", color); return nil }})
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		return []lifecycle.Component{c}, nc.Close, nil
	case "inventory":
		ex, err := job.NewExecutor(job.Config{Client: d.cli, ID: id, TTL: 2 * time.Second, Logger: d.log,
			Job: job.Job{Name: "reconcile", Every: 100 * time.Millisecond, Items: 4,
				Handler: func(context.Context, int) error { d.work.add("job", color); return nil }}})
		if err != nil {
			return nil, nil, err
		}
		return []lifecycle.Component{ex}, func() {}, nil
	}
	return nil, func() {}, nil
}

// workLog counts MQ messages handled and job runs, by color, since the phase began.
type workLog struct {
	mu     sync.Mutex
	counts map[string]int // "mq/blue" → n
	// drained is the color drained in the current phase (work by it counts as a violation
	// after grace); "" for none.
	drained    string
	grace      time.Time
	violations int
}

func (w *workLog) add(kind, color string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts[kind+"/"+color]++
	if color != "" && color == w.drained && time.Now().After(w.grace) {
		w.violations++
	}
}

// phase starts counting a new phase in which drained (or nobody) is drained.
func (w *workLog) phase(drained string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts, w.drained, w.grace = map[string]int{}, drained, time.Now().Add(300*time.Millisecond)
}

func (w *workLog) summary() (string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%5d/%-5d %5d/%-5d", w.counts["mq/blue"], w.counts["mq/green"], w.counts["job/blue"], w.counts["job/green"]), w.violations
}

// stop takes the instance of app and color offline, losslessly.
func (d *demo) stop(ctx context.Context, app, color string) error {
	d.mu.Lock()
	inst, closeComps := d.insts[app+"/"+color], d.closers[app+"/"+color]
	delete(d.insts, app+"/"+color)
	delete(d.closers, app+"/"+color)
	d.mu.Unlock()
	err := inst.Offline(ctx)
	if closeComps != nil {
		closeComps()
	}
	return err
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
	ns, err := natstest.New() // in production: your NATS cluster
	if err != nil {
		return false, err
	}
	defer ns.Close()
	work := &workLog{counts: map[string]int{}}
	d := &demo{cli: cli, rules: rules, log: log, nats: ns, work: work,
		insts: map[string]*lifecycle.Instance{}, closers: map[string]func(){}}
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
	l.work = work
	stopProducer, err := produce(ns.URL())
	if err != nil {
		return false, err
	}
	defer stopProducer()

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
		{"all v1, no release", func() error { return nil }, ""},
		{"open trade (order, inventory)", func() error { _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); return err }, ""},
		{"drain blue (0 %)", shift(0), "blue"},
		{"restart blue as v2", func() error { return restart("blue") }, "blue"},
		{"canary 1 % on blue v2", shift(1), ""},
		{"10 %", shift(10), ""},
		{"50 %", shift(50), ""},
		{"100 % (green drained)", shift(100), "green"},
		{"restart green as v2", func() error { return restart("green") }, "green"},
		{"finish (all v2, 50/50)", func() error { _, err := ctl.Finish(ctx, "trade"); return err }, ""},
	}
	var total stats
	if err := l.run(out, phase, phases, &total); err != nil {
		return false, err
	}
	_, drainedWork := work.summary()
	ok := total.failed == 0 && total.violations == 0 && drainedWork == 0
	verdict := "LOSSLESS"
	if !ok {
		verdict = "NOT LOSSLESS"
	}
	fmt.Fprintf(out, "\nverdict: %s — %d requests, %d failed, %d sticky violations; %d messages or job runs on a drained color\n",
		verdict, total.n, total.failed, total.violations, drainedWork)
	return ok, nil
}

type step struct {
	name    string
	do      func() error
	drained string // the color drained during this phase, if any
}

// load is the closed-loop callers of the gateway, counting into the current phase's stats.
type load struct {
	cur  atomic.Pointer[stats]
	stop chan struct{}
	wg   sync.WaitGroup
	work *workLog // nil in the naive mode
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
	head := fmt.Sprintf("%-34s %8s %7s %8s %8s %10s %9s %9s", "phase", "requests", "failed", "blue", "green", "violations", "p50", "p99")
	if l.work != nil {
		head += "  mq blue/green job blue/green"
	}
	fmt.Fprintln(out, head)
	for _, st := range steps {
		s := newStats()
		l.cur.Store(s)
		if l.work != nil {
			l.work.phase(st.drained)
		}
		if err := st.do(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		time.Sleep(phase)
		l.cur.Store(newStats()) // calls from now on count nowhere
		row := s.row(st.name)
		if l.work != nil {
			w, _ := l.work.summary()
			row += "  " + w
		}
		fmt.Fprintln(out, row)
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

// produce publishes to orders.events, 200 messages/s, cycling blue, green and untagged, as
// producers of each color would.
func produce(url string) (stop func(), err error) {
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	b, err := natsjs.New(nc, natsjs.Options{})
	if err != nil {
		nc.Close()
		return nil, err
	}
	ps := []*mq.Producer{mq.NewProducer(b, registry.ColorBlue), mq.NewProducer(b, registry.ColorGreen), mq.NewProducer(b, registry.ColorNone)}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for k := 0; ; k++ {
			select {
			case <-done:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = ps[k%3].Publish(ctx, "orders.events", mq.Message{Value: []byte(strconv.Itoa(k))})
			cancel()
		}
	}()
	return func() { close(done); wg.Wait(); nc.Close() }, nil
}
