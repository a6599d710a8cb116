// Command bluegreen performs a whole blue/green release of channel "trade" (apps order and
// inventory) under load, in one process on an embedded etcd, and shows that no request fails
// and none that entered v2 code meets v1 code further down:
//
//	gateway → order → inventory      each of order and inventory: one blue, one green instance
//
// v2 order calls a method that only v2 inventory has (SayHellos); a v2 order meeting a v1
// inventory would fail with Unimplemented, which the demo counts as a sticky violation.
//
// Order instances also consume an MQ topic and inventory instances run a sharded job; the
// verdict counts work done on a drained color from events, not from when a phase began: an
// MQ message handled by a consumer after it left its groups for the drain, and a job run
// claimed for a trigger after the executor's drains (its lifecycle instance's) showed the
// drain and before the rule write that ended it. Each phase's load begins once its step has
// taken effect (every instance's drains show what the new rule drains; the drained color's
// consumers have left their groups).
//
//	go run ./examples/bluegreen            # ~25 s
//	go run ./examples/bluegreen -phase 500ms
//	go run ./examples/bluegreen -naive     # first the same release done naively, for comparison
//	go run ./examples/bluegreen -bad-v2 0.2  # v2 fails 20 % of calls: the plan's guard switches back
//	go run ./examples/bluegreen -fault kill-canary
//	go run ./examples/bluegreen -dashboard 127.0.0.1:8080
//	go run ./examples/bluegreen -dashboard 127.0.0.1:8080 -bad-v2 0.05
//
// The release: open channel trade, drain blue (0 %), restart blue as v2; then a release plan
// (package release, what `switchyard release run plan.yaml` runs) moves blue (v2) from 1 %
// through 10 % and 50 % to 100 %, each step held for -hold (1 s) once each app has
// -min-requests (20) requests on blue, and judged by its guard: blue's error rate against
// green's in the same window, at most 1 point above (the plan's default). The table has a row
// per step of the plan and the guard's verdict under it. Then green is drained at 100 %,
// restarted as v2, and the release finishes. Every phase but the plan's steps lasts -phase.
//
// With -dashboard ADDR the demo serves the live dashboard of channel trade on ADDR (package
// dashboard, the page `switchyard dashboard` serves), following the demo's etcd, and prints
// its URL before the release begins: open it to watch the split move step by step, each
// color's requests/s, errors, latency, mq messages and job runs, the drained color go quiet
// and its instances come back as v2, and the rule's events. Every instance the demo runs
// (gateway, order, inventory) is a lifecycle instance whose record carries its admin address,
// where the dashboard reads its /stats. After the verdict the demo stops the load and keeps
// the dashboard (and the instances) up until interrupted (Ctrl-C), so the page can still be
// read; -dashboard-linger D keeps it up for D instead, and -dashboard-linger 0 exits at the
// verdict. The figures cover the last 10 s, so once the load stops they fade to 0; the
// events stay. -naive runs on an etcd of its own, which the dashboard does not show.
//
// With -bad-v2 F every v2 inventory instance fails the fraction F of its calls with
// codes.Internal, as a bad release would: the dashboard shows the errors on the color that
// runs v2 (at order too, which passes them on), and the verdict counts them as failed. The
// plan's guard sees blue's error rate rise above green's during the canary and switches back
// by itself: all traffic to green (v1) at once. The demo then stops the release (blue, v2,
// stays drained; green is not restarted), runs one more phase with all traffic on green, and
// its verdict gives the guard's verdict, the time from the first bad response the load saw to
// the switch-back (the rule write), the failed requests, and their bound: canary share ×
// failure rate × that time × the step's request rate, plus 1 (the first bad response, which
// starts the clock) and 3 standard deviations of the canary's share of the calls (the gateway
// decides each call's color at random). It exits 1: requests failed, though the guard worked.
// An F too small to breach the plan's 1 point lets the plan promote, and the verdict counts
// the failures (NOT LOSSLESS).
//
// With -fault kill-canary the blue inventory instance, v2 and the canary, is killed at 10 %
// with no cleanup, as a crashed process or a lost node would be: its gRPC server stops hard
// and its record stays in etcd until its lease expires (no deregistration, no offline mark).
// The load keeps running. order@blue, the code of the decided color whose callee died,
// marks itself degraded, so the gateway's picker sends it no more blue-decided call and
// decides green for them; a blue order never calls a v1 inventory (it fails the call rather
// than cross to old code). A new blue inventory then replaces the dead one and the release
// goes on to the end. The verdict counts the calls lost, all of which must have been at
// order@blue between the kill and the moment the gateway stopped deciding blue for it, the
// calls that crossed from v2 to v1 code (must be 0), and how long until new decisions
// stopped going to blue. This fault runs on hand-written shifts (1 %, 10 %, 50 %, 100 %, each
// for -phase), not on the plan: the dead canary's failures are refusals at order@blue, which
// a plan's guard would judge as blue's errors and switch back, where this fault shows the
// release going on after the canary is replaced.
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
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/job"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/natsjs"
	"github.com/switchyard-go/switchyard/mq/natsjs/natstest"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func main() {
	phase := flag.Duration("phase", 3*time.Second, "how long each phase of the release runs under load (the release plan's steps last their -hold once judged)")
	workers := flag.Int("workers", 8, "concurrent callers of the gateway (closed loop)")
	naive := flag.Bool("naive", false, "first do the same release as a plain rolling restart (round_robin, no switchyard lifecycle), for comparison")
	fault := flag.String("fault", "", "inject a fault mid-release; \"kill-canary\": at 10 % kill the blue (v2, canary) inventory instance with no cleanup\n"+
		"(its gRPC server stops hard, its record stays in etcd until its lease expires), keep the load running, replace it\n"+
		"and finish the release; the verdict counts the failed calls against their bound (calls in flight at the dead\n"+
		"canary's caller), calls from v2 to v1 code (must be 0) and how long until new decisions stopped going to blue")
	badV2 := flag.Float64("bad-v2", 0, "the fraction (0 to 1) of its calls v2 inventory fails with codes.Internal, as a bad release would:\n"+
		"the release plan's guard switches back to v1 during the canary, the demo stops the release there, and the verdict\n"+
		"gives the time from the first bad response to the switch-back and the failed requests against their bound")
	dash := flag.String("dashboard", "", "serve the live dashboard of channel \"trade\" (the page the switchyard dashboard command serves) on `addr`,\n"+
		"e.g. 127.0.0.1:8080, while the release runs; its URL is printed at start")
	linger := flag.Duration("dashboard-linger", -time.Second, "with -dashboard: how long the dashboard stays up after the verdict (the load stopped,\n"+
		"the instances still up); negative: until interrupted (Ctrl-C); 0: the demo exits at the verdict")
	hold := flag.Duration("hold", defaultHold, "how long the release plan holds each step (1 %, 10 %, 50 %, 100 % blue v2) once it can judge it")
	minRequests := flag.Int("min-requests", defaultMinRequests, "the release plan's minimum sample: requests on blue (v2) per app before a step is judged")
	flag.Parse()
	if *fault != "" && *fault != killCanary {
		fmt.Fprintf(os.Stderr, "bluegreen: -fault %q is not a fault this demo knows; the one it knows is %q\n", *fault, killCanary)
		os.Exit(2)
	}
	if *badV2 < 0 || *badV2 > 1 {
		fmt.Fprintf(os.Stderr, "bluegreen: -bad-v2 %v is not a fraction; give one from 0 (no call fails) to 1 (every call fails)\n", *badV2)
		os.Exit(2)
	}
	if *hold <= 0 || *minRequests < 1 {
		fmt.Fprintf(os.Stderr, "bluegreen: -hold %v -min-requests %d: give a hold above 0 (e.g. 1s) and a minimum sample of at least 1 request (e.g. 20)\n", *hold, *minRequests)
		os.Exit(2)
	}
	if *naive {
		failed, total, err := runNaive(os.Stdout, *phase, *workers)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bluegreen -naive:", err)
			os.Exit(2)
		}
		fmt.Printf("naive rolling restart: %d of %d requests failed\n\nnow the same release with switchyard:\n\n", failed, total)
	}
	ok, err := run(os.Stdout, options{phase: *phase, workers: *workers, fault: *fault, badV2: *badV2, dashboard: *dash, linger: *linger,
		hold: *hold, minRequests: *minRequests})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bluegreen:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// options are how run performs the release (main's flags).
type options struct {
	phase     time.Duration // each phase's load
	workers   int           // concurrent callers of the gateway
	fault     string        // "" or killCanary
	badV2     float64       // the fraction of its calls v2 inventory fails
	dashboard string        // where to serve the dashboard; "" for none
	linger    time.Duration // how long the dashboard stays up after the verdict (negative: until interrupted)
	// The release plan's hold of each step and minimum sample (0: defaultHold,
	// defaultMinRequests); not used with fault killCanary, which shifts by hand.
	hold        time.Duration
	minRequests int
}

// demo is the running system: etcd and the instances by app and color.
type demo struct {
	etcd    *etcdtest.Server
	cli     *clientv3.Client
	log     *slog.Logger
	nats    *natstest.Server
	work    *workLog
	crossed atomic.Int64 // calls from v2 order that reached a v1 inventory: new code calling old code
	badV2   float64      // the fraction of its calls v2 inventory fails (-bad-v2)
	// leaky, when set before the instances start, gives every order instance a second client
	// of inventory that does not honour sticky decisions (round_robin over every inventory
	// instance, the incoming baggage copied onto its calls, as a middle service with plain
	// gRPC and hand-made propagation would), used instead of its switchyard client while
	// leaky is true: the tests' way to break stickiness in a middle hop (crossings).
	leaky   *atomic.Bool
	mu      sync.Mutex
	insts   map[string]*lifecycle.Instance // "order/blue" → instance
	servers map[string]*server             // "order/blue" → its gRPC service
	clis    map[string]*clientv3.Client    // "order/blue" → its own etcd client, as its own process would have
	closers map[string]func()              // what closes its components' and its downstream connections
	watched map[string]*watched            // "order/blue" → what its components saw
	execs   map[string]*watched            // executor ID → its instance's, for the job verdict
	ids     map[string]bool                // instance IDs used so far
	// For the job verdict: the color drained in the current phase, the rule revision at which
	// each color's drain ended, and the job's claims by key.
	drained    string
	undrainRev map[string]int64
	claims     map[string]claim
}

// server is one instance of gateway, order or inventory.
type server struct {
	greeterpb.UnimplementedGreeterServer
	app, id, color, version string
	next                    greeterpb.GreeterClient // nil for inventory
	crossed                 *atomic.Int64           // the demo's count of v2 → v1 calls; nil in the naive mode
	// bad is the fraction of its calls it fails with codes.Internal (-bad-v2, v2 inventory
	// only): call n fails when floor(n·bad) grows, so exactly that fraction, evenly spread.
	bad  float64
	badN atomic.Int64
	// leak is order's client of inventory that ignores sticky decisions, used instead of next
	// while leaky is true (demo.leaky); nil unless the demo set leaky.
	leak  greeterpb.GreeterClient
	leaky *atomic.Bool
	// SayHello calls taken, failed and in flight, and when the latest one arrived (unix ns).
	calls, failed, inflight, last atomic.Int64
}

func (s *server) label() string { return s.app + "@" + s.color + "/" + s.version }

// SayHello: inventory answers; order asks inventory (v2 order through the v2-only method);
// gateway asks order.
func (s *server) SayHello(ctx context.Context, _ *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	s.last.Store(time.Now().UnixNano())
	s.calls.Add(1)
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	r, err := s.sayHello(ctx)
	if err != nil {
		s.failed.Add(1)
	}
	return r, err
}

func (s *server) sayHello(ctx context.Context) (*greeterpb.HelloReply, error) {
	if err := s.fail(); err != nil {
		return nil, err
	}
	if s.next == nil {
		return &greeterpb.HelloReply{Message: s.label()}, nil
	}
	next := s.next
	if s.leak != nil && s.leaky.Load() {
		next = s.leak
	}
	if s.app == "order" && s.version == "v2" {
		st, err := next.SayHellos(ctx, &greeterpb.HelloRequest{Count: 1})
		if err != nil {
			return nil, err
		}
		r, err := st.Recv()
		if err != nil {
			return nil, err
		}
		return &greeterpb.HelloReply{Message: s.label() + " > " + r.GetMessage()}, nil
	}
	r, err := next.SayHello(ctx, &greeterpb.HelloRequest{})
	if err != nil {
		return nil, err
	}
	return &greeterpb.HelloReply{Message: s.label() + " > " + r.GetMessage()}, nil
}

// fail returns the error of a call the server fails on purpose (-bad-v2), nil for the others.
func (s *server) fail() error {
	if s.bad <= 0 {
		return nil
	}
	n := s.badN.Add(1)
	if int64(float64(n)*s.bad) == int64(float64(n-1)*s.bad) {
		return nil
	}
	return status.Error(codes.Internal, s.label()+" failed the call (-bad-v2)")
}

// SayHellos exists only in v2 inventory.
func (s *server) SayHellos(_ *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	if s.app != "inventory" || s.version != "v2" {
		if s.crossed != nil { // nil in the naive mode
			s.crossed.Add(1) // only v2 order calls SayHellos
		}
		return status.Error(codes.Unimplemented, s.label()+" has no SayHellos")
	}
	if err := s.fail(); err != nil {
		return err
	}
	return st.Send(&greeterpb.HelloReply{Message: s.label()})
}

// start runs one instance of app, of color and version, through lifecycle, with its own etcd
// client and its own connection to its downstream app (Instance.Dial: the instance's rules,
// resolver and sticky interceptors). A replacement of a killed instance gets a new ID: the
// dead one's record holds the old one until its lease expires.
func (d *demo) start(ctx context.Context, app, color, version string) error {
	id := app + "-" + color + "-" + version
	d.mu.Lock()
	for n := 2; d.ids[id]; n++ {
		id = fmt.Sprintf("%s-%s-%s-%d", app, color, version, n)
	}
	d.ids[id] = true
	d.mu.Unlock()
	cli, err := d.etcd.NewClient(d.etcd.Endpoints())
	if err != nil {
		return err
	}
	inst, err := lifecycle.New(lifecycle.Config{
		Client: cli, App: app, ID: id, Color: deploy.Color(color), Version: version,
		Warmup: 500 * time.Millisecond, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		QuietPeriod: 300 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 5 * time.Second, Logger: d.log,
	})
	if err != nil {
		cli.Close()
		return err
	}
	comps, closeComps, err := d.components(cli, app, id, color, inst)
	if err != nil {
		_ = inst.Offline(ctx) // never started: only ends what New made
		cli.Close()
		return err
	}
	inst.Append(comps...)
	s := &server{app: app, id: id, color: color, version: version, crossed: &d.crossed}
	if app == "inventory" && version == "v2" {
		s.bad = d.badV2
	}
	closeAll := closeComps
	if next := downstream[app]; next != "" {
		cc, err := inst.Dial(next) // before Start: its calls wait until the rules are loaded
		if err != nil {
			_ = inst.Offline(ctx)
			closeComps()
			cli.Close()
			return err
		}
		closeAll = func() { _ = cc.Close(); closeComps() }
		s.next = greeterpb.NewGreeterClient(cc)
		if app == "order" && d.leaky != nil {
			plain, err := dialer(cli, d.log, roundRobin, grpc.WithChainUnaryInterceptor(forwardBaggage),
				grpc.WithChainStreamInterceptor(forwardBaggageStream))(next)
			if err != nil {
				_ = inst.Offline(ctx)
				closeAll()
				cli.Close()
				return err
			}
			closeAll = func() { _ = plain.Close(); _ = cc.Close(); closeComps() }
			s.leak, s.leaky = greeterpb.NewGreeterClient(plain), d.leaky
		}
	}
	greeterpb.RegisterGreeterServer(inst.Server(), s)
	if err := inst.Start(ctx); err != nil {
		closeAll()
		cli.Close()
		return err
	}
	d.mu.Lock()
	d.insts[app+"/"+color] = inst
	d.servers[app+"/"+color] = s
	d.clis[app+"/"+color] = cli
	d.closers[app+"/"+color] = closeAll
	d.mu.Unlock()
	return nil
}

// kill ends the instance of app and color as a crash would: first its etcd client closes, so
// nothing of it reaches etcd any more, not even what its components' Stop would send; then
// Instance.Abort stops it at once: its gRPC server stops hard, failing the calls in flight,
// with no deregistration, no offline mark and no lease keepalive (its record stays until the
// lease expires).
func (d *demo) kill(app, color string) {
	inst, cli, closeAll := d.take(app, color, true) // its rule client follows nothing any more
	cli.Close()
	inst.Abort()
	closeAll()
}

func (d *demo) server(app, color string) *server {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.servers[app+"/"+color]
}

// watched is what the demo sees of one instance's MQ consumer or job executor, for the
// verdict, from events the code controls rather than from the time a phase began. It is the
// deploy.Drains the component follows: the instance's, noting the first time the component
// (or the demo) read them showing the instance's color drained. For a consumer it also counts
// the group memberships it holds, through its broker (a message handled while it holds none
// is one handled after it left its groups for a drain).
type watched struct {
	deploy.Drains // the instance's
	app, id       string
	color         deploy.Color
	mu            sync.Mutex
	drainSeen     time.Time    // zero until the drains showed the color drained
	members       atomic.Int64 // consumer: its group memberships now
}

// Drained is the instance's, noting the first time they showed its color drained: a
// component acts on what it reads here, so it saw the drain no earlier than that.
func (w *watched) Drained() (deploy.Drain, <-chan struct{}) {
	d, changed := w.Drains.Drained()
	if d.Of(w.color) {
		w.mu.Lock()
		if w.drainSeen.IsZero() {
			w.drainSeen = time.Now()
		}
		w.mu.Unlock()
	}
	return d, changed
}

// DidWork passes the component's work on to the instance (lifecycle's Instance is a
// deploy.Worker: its window, hence /stats and the dashboard, counts mq messages and job runs).
// Without it this wrapper would hide the instance's DidWork from mq and job, which look for
// it on the Drains they are given.
func (w *watched) DidWork(kind deploy.WorkKind, failed bool) {
	if wk, ok := w.Drains.(deploy.Worker); ok {
		wk.DidWork(kind, failed)
	}
}

// drains is what the instance's drains show now.
func (w *watched) drains() deploy.Drain {
	d, _ := w.Drained()
	return d
}

// hasLeft reports whether the consumer is in no group (drained, or stopped).
func (w *watched) hasLeft() bool { return w.members.Load() == 0 }

// countedBroker is the consumer's broker, counting its memberships into w: a membership
// counts from before it joins until its Stop has returned (its handler calls are over).
type countedBroker struct {
	mq.Broker
	w *watched
}

func (b countedBroker) Subscribe(ctx context.Context, topic, group string, fn func(context.Context, mq.Message) error) (mq.Subscription, error) {
	b.w.members.Add(1)
	sub, err := b.Broker.Subscribe(ctx, topic, group, fn)
	if err != nil {
		b.w.members.Add(-1)
		return nil, err
	}
	return countedSub{sub, b.w}, nil
}

type countedSub struct {
	mq.Subscription
	w *watched
}

func (s countedSub) Stop(ctx context.Context) error {
	defer s.w.members.Add(-1)
	return s.Subscription.Stop(ctx)
}

// components are what an instance runs besides RPCs: order instances consume "orders.events"
// in group "audit"; inventory instances run the sharded job "reconcile" (4 items, every 100 ms).
func (d *demo) components(cli *clientv3.Client, app, id, color string, drains deploy.Drains) ([]lifecycle.Component, func(), error) {
	w := &watched{Drains: drains, app: app, id: id, color: deploy.Color(color)}
	if app == "order" || app == "inventory" {
		d.mu.Lock()
		d.watched[app+"/"+color] = w
		d.mu.Unlock()
	}
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
		c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: countedBroker{b, w}, Topic: "orders.events", Group: "audit", Drains: w, Logger: d.log,
			Handler: func(context.Context, mq.Message) error {
				d.work.add("mq", color)
				if w.hasLeft() { // delivered after the consumer left its groups for the drain
					d.work.violation(fmt.Sprintf("%s handled a message after leaving its groups", id))
				}
				return nil
			}})
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		return []lifecycle.Component{c}, nc.Close, nil
	case "inventory":
		ex, err := job.NewExecutor(job.Config{Client: cli, ID: id, TTL: 2 * time.Second, Drains: w, Logger: d.log,
			Job: job.Job{Name: "reconcile", Every: 100 * time.Millisecond, Items: 4,
				Handler: func(context.Context, int) error { d.work.add("job", color); return nil }}})
		if err != nil {
			return nil, nil, err
		}
		d.mu.Lock()
		d.execs[id] = w
		d.mu.Unlock()
		return []lifecycle.Component{ex}, func() {}, nil
	}
	return nil, func() {}, nil
}

// workLog counts MQ messages handled and job runs, by color, since the phase began, and the
// work done on a drained color (violations; the first few described in why).
type workLog struct {
	mu         sync.Mutex
	counts     map[string]int // "mq/blue" → n
	violations int
	why        []string
}

func (w *workLog) add(kind, color string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts[kind+"/"+color]++
}

func (w *workLog) violation(why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.violations++
	if len(w.why) < 5 {
		w.why = append(w.why, why)
	}
}

// phase starts counting a new phase.
func (w *workLog) phase() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts = map[string]int{}
}

func (w *workLog) reasons() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.why)
}

func (w *workLog) summary() (string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%5d/%-5d %5d/%-5d", w.counts["mq/blue"], w.counts["mq/green"], w.counts["job/blue"], w.counts["job/green"]), w.violations
}

// take removes the instance of app and color from the demo's tables and returns it with its
// etcd client and what closes its components' and downstream connections; unwatch also
// forgets what its components saw.
func (d *demo) take(app, color string, unwatch bool) (*lifecycle.Instance, *clientv3.Client, func()) {
	key := app + "/" + color
	d.mu.Lock()
	defer d.mu.Unlock()
	inst, cli, closeComps := d.insts[key], d.clis[key], d.closers[key]
	delete(d.insts, key)
	delete(d.clis, key)
	delete(d.closers, key)
	if unwatch {
		delete(d.watched, key)
	}
	return inst, cli, closeComps
}

// stop takes the instance of app and color offline, losslessly.
func (d *demo) stop(ctx context.Context, app, color string) error {
	inst, cli, closeAll := d.take(app, color, false)
	err := inst.Offline(ctx)
	closeAll()
	cli.Close()
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
	begun      time.Time // when the row began (load.begin)
	ended      time.Time // and ended (load.end)
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

// run performs the release under load and prints the table and the verdict. With
// opt.dashboard it serves the dashboard of channel trade for the whole release and, after the
// verdict, stops the load and keeps it up for opt.linger (negative: until interrupted).
func run(out io.Writer, opt options) (bool, error) {
	ctx := context.Background()
	sys, err := startSystem(ctx, opt.badV2, nil)
	if err != nil {
		return false, err
	}
	defer sys.close()
	d, ctl := sys.demo, sys.ctl
	var dash *watch
	if opt.dashboard != "" {
		if dash, err = startDashboard(d.cli, opt.dashboard, d.log, 0); err != nil {
			return false, err
		}
		defer func() {
			if err := dash.close(); err != nil {
				fmt.Fprintln(out, "the dashboard failed:", err)
			}
		}()
		fmt.Fprintf(out, "dashboard of channel trade: %s\n\n", dash.url)
	}

	l := startLoad(ctx, sys.gateway, opt.workers)
	defer l.close()
	l.work = d.work
	stopProducer, err := produce(d.nats.URL())
	if err != nil {
		return false, err
	}
	defer stopProducer()

	shift := func(p float64) func() error {
		return func() error { _, err := ctl.Shift(ctx, "trade", p); return err }
	}
	phases := []step{
		{"all v1, no release", func() error { return nil }, ""},
		{"open trade (order, inventory)", func() error { _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); return err }, ""},
		{"drain blue (0 %)", shift(0), "blue"},
		{"restart blue as v2", func() error { return d.restart(ctx, "blue") }, "blue"},
		{"canary 1 % on blue v2", shift(1), ""},
		{"10 %", shift(10), ""},
		{"50 %", shift(50), ""},
		{"100 % (green drained)", shift(100), "green"},
		{"restart green as v2", func() error { return d.restart(ctx, "green") }, "green"},
		{"finish (all v2, 50/50)", func() error { _, err := ctl.Finish(ctx, "trade"); return err }, ""},
	}
	canary := canaryKill{workers: opt.workers}
	if opt.fault == killCanary { // after "10 %"
		phases = slices.Insert(phases, 6,
			step{"kill inventory blue (no cleanup)", func() error { return d.killCanary(ctx, &canary) }, ""},
			step{"replace inventory blue (new v2)", func() error { return d.replaceCanary(ctx, &canary) }, ""})
	}
	for k := range phases { // each phase's load begins once its step has taken effect
		st := phases[k]
		phases[k].do = func() error {
			if err := st.do(); err != nil {
				return err
			}
			return d.afterStep(ctx, st.drained)
		}
	}
	var total stats
	l.header(out)
	var guarded *planRun
	if opt.fault == killCanary {
		// The kill's failures are refusals at order@blue, which a plan's guard would judge as
		// the new color's errors and switch back: this fault runs on hand-written shifts.
		if err := l.run(out, opt.phase, phases, &total); err != nil {
			return false, err
		}
	} else {
		// The traffic shift (1 %, 10 %, 50 %, 100 %) is the release plan's; the rest the demo's.
		plan, err := demoPlan(opt.hold, opt.minRequests)
		if err != nil {
			return false, err
		}
		if err := l.run(out, opt.phase, phases[:4], &total); err != nil {
			return false, err
		}
		pr, err := d.runPlan(ctx, out, l, opt.phase, plan, &total)
		if err != nil {
			return false, fmt.Errorf("the release plan: %w", err)
		}
		if pr.switchedBack != nil {
			guarded = &pr
		} else if err := l.run(out, opt.phase, phases[8:], &total); err != nil {
			return false, err
		}
	}
	if err := d.judgeJobs(ctx); err != nil {
		return false, err
	}
	_, drainedWork := d.work.summary()
	var ok bool
	switch {
	case opt.fault == killCanary:
		ok = canary.verdict(out, &total, d.crossed.Load(), drainedWork, d.work.reasons())
	case guarded != nil:
		var firstBad time.Time
		if ns := l.firstFail.Load(); ns != 0 {
			firstBad = time.Unix(0, ns)
		}
		guardVerdict(out, *guarded, firstBad, opt.badV2, &total, drainedWork, d.work.reasons())
		ok = false // requests failed
	default:
		ok = total.failed == 0 && total.violations == 0 && drainedWork == 0
		verdict := "LOSSLESS"
		if !ok {
			verdict = "NOT LOSSLESS"
		}
		fmt.Fprintf(out, "\nverdict: %s — %d requests, %d failed, %d sticky violations; %d messages or job runs on a drained color\n",
			verdict, total.n, total.failed, total.violations, drainedWork)
		for _, why := range d.work.reasons() {
			fmt.Fprintln(out, "   on a drained color:", why)
		}
	}
	if dash != nil && opt.linger != 0 {
		l.close()
		stopProducer()
		dash.linger(out, opt.linger)
	}
	return ok, nil
}

// system is what a release runs on: an embedded etcd, the rule controller, an embedded NATS,
// the demo's instances (every one a lifecycle instance, whose record carries its admin
// address, so a dashboard reads its /stats), at v1 in blue and green for order and inventory
// and colorless for the gateway, and a client of the gateway.
type system struct {
	*demo
	ctl     *traffic.Controller
	gateway greeterpb.GreeterClient
	undo    []func() // close runs them, last first
}

// startSystem brings the system up at v1: v2 inventory instances it starts later fail the
// fraction badV2 of their calls; leaky, if not nil, gives order instances their client that
// ignores decisions (demo.leaky).
func startSystem(ctx context.Context, badV2 float64, leaky *atomic.Bool) (sys *system, err error) {
	sys = &system{}
	defer func() {
		if err != nil {
			sys.close()
		}
	}()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	etcd, cli, stopEtcd, err := newEtcd()
	if err != nil {
		return nil, err
	}
	sys.undo = append(sys.undo, stopEtcd)
	if sys.ctl, err = traffic.NewController(traffic.Config{Client: cli}); err != nil {
		return nil, err
	}
	ns, err := natstest.New() // in production: your NATS cluster
	if err != nil {
		return nil, err
	}
	sys.undo = append(sys.undo, ns.Close)
	d := &demo{etcd: etcd, cli: cli, log: log, nats: ns, work: &workLog{counts: map[string]int{}}, badV2: badV2, leaky: leaky,
		insts: map[string]*lifecycle.Instance{}, servers: map[string]*server{}, clis: map[string]*clientv3.Client{},
		closers: map[string]func(){}, watched: map[string]*watched{}, execs: map[string]*watched{}, ids: map[string]bool{},
		undrainRev: map[string]int64{}, claims: map[string]claim{}}
	sys.demo = d
	sys.undo = append(sys.undo, func() {
		for key := range d.insts {
			app, color, _ := strings.Cut(key, "/")
			_ = d.stop(ctx, app, color)
		}
	})
	start := func(app, color, version string) error { return d.start(ctx, app, color, version) }
	gateway, closeGateway, err := bringUp(ctx, start, dialer(cli, log, ""))
	if err != nil {
		return nil, err
	}
	sys.gateway = gateway
	sys.undo = append(sys.undo, closeGateway)
	return sys, nil
}

// close stops what startSystem started.
func (s *system) close() {
	for i := len(s.undo) - 1; i >= 0; i-- {
		s.undo[i]()
	}
	s.undo = nil
}

// restart takes order and inventory of color offline (callers first, then callees) and
// starts them again as v2 (callees first).
func (d *demo) restart(ctx context.Context, color string) error {
	for _, app := range []string{"order", "inventory"} {
		if err := d.stop(ctx, app, color); err != nil {
			return fmt.Errorf("stop %s/%s: %w", app, color, err)
		}
	}
	if err := d.start(ctx, "inventory", color, "v2"); err != nil {
		return err
	}
	return d.start(ctx, "order", color, "v2")
}

// calls is "1 call <what>" or "n calls <what>".
func calls(n int64, what string) string {
	if n == 1 {
		return "1 call " + what
	}
	return fmt.Sprintf("%d calls %s", n, what)
}

// killCanary is the -fault value that kills the canary mid-release.
const killCanary = "kill-canary"

// maxStopBlue bounds, for the verdict, the time from the kill to the last call decided blue
// that reached order@blue: seconds, well under the lease TTL (10 s) after which the dead
// record would leave by itself.
const maxStopBlue = 2 * time.Second

// degradedWait is how long the kill step waits for order@blue's record to say degraded.
const degradedWait = 5 * time.Second

// canaryKill is what -fault kill-canary measured at order@blue, the caller of the killed
// inventory@blue: every call it took after the kill fails (its callee of its color is gone,
// and it does not cross to v1), until the gateway stops deciding blue for it.
type canaryKill struct {
	caller          *server   // order@blue
	at, degraded    time.Time // the kill; when order@blue's record said degraded
	inflight        int64     // calls in flight at order@blue at the kill
	calls0, failed0 int64     // its counters at the kill
	taken, failed   int64     // calls it took after the kill, and calls it failed since, until the replacement
	last            time.Time // when the last of them arrived
	victim          string    // the killed instance's ID
	recordKept      bool      // its record was still in etcd when order@blue was marked degraded
	workers         int       // concurrent callers of the gateway
}

// killCanary kills inventory@blue and returns once order@blue's record says degraded, or
// after degradedWait without (the verdict then fails and the load goes on).
func (d *demo) killCanary(ctx context.Context, k *canaryKill) error {
	k.caller, k.victim = d.server("order", "blue"), d.server("inventory", "blue").id
	key := deploy.InstanceKey(deploy.DefaultPrefix, "order", k.caller.id)
	resp, err := d.cli.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) != 1 {
		return fmt.Errorf("order@blue is not registered before the kill")
	}
	if why := degraded(resp.Kvs[0].Value); why != "" {
		return fmt.Errorf("order@blue is degraded before the kill (%s)", why)
	}
	wctx, cancel := context.WithTimeout(ctx, degradedWait)
	defer cancel()
	events := d.cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1))
	k.at, k.inflight = time.Now(), k.caller.inflight.Load()
	k.calls0, k.failed0 = k.caller.calls.Load(), k.caller.failed.Load()
	d.kill("inventory", "blue")
watch:
	for wr := range events {
		for _, ev := range wr.Events {
			if degraded(ev.Kv.Value) != "" {
				k.degraded = time.Now()
				break watch
			}
		}
	}
	dead, err := d.cli.Get(ctx, deploy.InstanceKey(deploy.DefaultPrefix, "inventory", k.victim))
	k.recordKept = err == nil && len(dead.Kvs) == 1
	return err
}

// degraded returns the Degraded of an instance record ("" for a deletion).
func degraded(record []byte) string {
	in, err := registry.Unmarshal(record)
	if err != nil {
		return ""
	}
	return in.Degraded
}

// replaceCanary closes the kill's accounts, starts a new inventory@blue (v2) and returns once
// order@blue's record is no longer degraded: blue decisions reach it again.
func (d *demo) replaceCanary(ctx context.Context, k *canaryKill) error {
	k.taken, k.failed = k.caller.calls.Load()-k.calls0, k.caller.failed.Load()-k.failed0
	k.last = time.Unix(0, k.caller.last.Load())
	if err := d.start(ctx, "inventory", "blue", "v2"); err != nil {
		return err
	}
	key := deploy.InstanceKey(deploy.DefaultPrefix, "order", k.caller.id)
	return waitFor(ctx, "order@blue to be no longer degraded", func() bool {
		resp, err := d.cli.Get(ctx, key)
		return err == nil && len(resp.Kvs) == 1 && degraded(resp.Kvs[0].Value) == ""
	})
}

// verdict prints the verdict of a run with the kill: LOSSLESS if no call failed; else the
// loss is bounded if every failed call was one order@blue had in flight when its callee died
// or took before the gateway stopped deciding blue for it, and that stopped within
// maxStopBlue. Either way no call may have gone from v2 code to v1 code.
func (k *canaryKill) verdict(out io.Writer, total *stats, crossed int64, drainedWork int, reasons []string) bool {
	bound := k.inflight + k.taken
	stopped := k.degraded.Sub(k.at)
	if k.last.After(k.at) {
		stopped = k.last.Sub(k.at)
	}
	ok := int64(total.failed) <= k.failed && k.failed <= bound && !k.degraded.IsZero() && stopped <= maxStopBlue &&
		crossed == 0 && total.violations == 0 && drainedWork == 0
	verdict := "LOSSLESS"
	switch {
	case !ok:
		verdict = "NOT LOSSLESS"
	case total.failed > 0:
		verdict = "LOSS BOUNDED BY THE CALLS IN FLIGHT"
	}
	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	fmt.Fprintf(out, "\nverdict: %s — %d requests, %d failed, %d sticky violations; %d messages or job runs on a drained color\n",
		verdict, total.n, total.failed, total.violations, drainedWork)
	where := "all at order@blue, the killed canary's caller"
	if int64(total.failed) > k.failed {
		where = fmt.Sprintf("only %d of them at order@blue, the killed canary's caller", k.failed)
	}
	fmt.Fprintf(out, "   %s, %s (bound: %d = %d it had in flight when inventory@blue died + %d it took before the gateway stopped deciding blue for it; %d callers)\n",
		calls(int64(total.failed), "failed"), where, bound, k.inflight, k.taken, k.workers)
	fmt.Fprintf(out, "   %s from new code to old code (v2 order → v1 inventory)\n", calls(crossed, "crossed"))
	last := "no blue-decided call reached order@blue after the kill"
	if k.last.After(k.at) {
		last = "the last blue-decided call reached order@blue " + ms(k.last.Sub(k.at)) + " after the kill"
	}
	marked := "order@blue's record said degraded " + ms(k.degraded.Sub(k.at)) + " after it"
	if k.degraded.IsZero() {
		marked = fmt.Sprintf("order@blue's record did not say degraded within %v", degradedWait)
	}
	fmt.Fprintf(out, "   new decisions stopped going to blue: %s (limit %v); %s\n", last, maxStopBlue, marked)
	fmt.Fprintf(out, "   %s was killed with no cleanup; its record still in etcd then: %v\n", k.victim, k.recordKept)
	for _, why := range reasons {
		fmt.Fprintln(out, "   on a drained color:", why)
	}
	return ok
}

// afterStep waits until a step has taken effect where the verdict looks — every instance's
// drains show what the rule the step wrote drains, and every consumer of the drained color
// (if any) is out of every group — then collects the job's claims
// so far. When a step ends a color's drain, it notes the revision of that rule write: the
// job verdict's bound.
func (d *demo) afterStep(ctx context.Context, drained string) error {
	rev, err := d.ruleRev(ctx)
	if err != nil {
		return err
	}
	return d.afterStepAt(ctx, drained, rev)
}

// ruleRev is the revision of channel trade's latest rule write (0 if it has none).
func (d *demo) ruleRev(ctx context.Context) (int64, error) {
	resp, err := d.cli.Get(ctx, deploy.ChannelKey(deploy.DefaultPrefix, "trade"))
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}

// afterStepAt is afterStep for the step whose rule write had revision rev: a step the demo
// did not write itself (the release plan's runner did).
func (d *demo) afterStepAt(ctx context.Context, drained string, rev int64) error {
	d.mu.Lock()
	if d.drained != "" && d.drained != drained {
		d.undrainRev[d.drained] = rev
	}
	d.drained = drained
	var ws []*watched
	for _, w := range d.watched {
		ws = append(ws, w)
	}
	d.mu.Unlock()
	want := deploy.Drain{Blue: drained == "blue", Green: drained == "green"}
	what := "every instance's components to see " + drainName(want)
	if drained != "" {
		what += " and the drained consumers out of every group"
	}
	if err := waitFor(ctx, what, func() bool {
		for _, w := range ws {
			if w.drains() != want {
				return false
			}
			if want.Of(w.color) && w.app == "order" && !w.hasLeft() {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	return d.collectClaims(ctx)
}

func drainName(d deploy.Drain) string {
	switch {
	case d.Blue && d.Green:
		return "blue and green drained"
	case d.Blue:
		return "blue drained"
	case d.Green:
		return "green drained"
	}
	return "nothing drained"
}

// waitFor polls cond until it holds, for at most 30 s.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// claim is one run of the job: the executor claimed item for the trigger at revision rev.
type claim struct {
	exec    string
	item    string
	trigger time.Time
	rev     int64
}

// claimsPrefix is where the job keeps its claims, runs/<item>/<trigger, unix ms> → executor
// ID (job's package doc); they live 2 minutes, so the demo collects them after every step.
var claimsPrefix = deploy.DefaultPrefix + "/jobs/reconcile/runs/"

func (d *demo) collectClaims(ctx context.Context) error {
	resp, err := d.cli.Get(ctx, claimsPrefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, kv := range resp.Kvs {
		item, ms, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), claimsPrefix), "/")
		t, err := strconv.ParseInt(ms, 10, 64)
		if !ok || err != nil {
			return fmt.Errorf("unexpected job claim key %q", kv.Key)
		}
		d.claims[string(kv.Key)] = claim{exec: string(kv.Value), item: item, trigger: time.UnixMilli(t), rev: kv.CreateRevision}
	}
	return nil
}

// judgeJobs counts the job runs made on a drained color: a claim by an executor for a trigger
// after its drains showed its color drained (an executor acts on a trigger only once
// it passed, so it decided to run with the drain in view), committed before the rule write
// that ended the drain (so it cannot have seen the end). Each color is drained once in this
// release. A run claimed just before the drain reached the executor is not one, however
// late it runs.
func (d *demo) judgeJobs(ctx context.Context) error {
	if err := d.collectClaims(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.claims {
		w := d.execs[c.exec]
		if w == nil {
			continue
		}
		w.mu.Lock()
		seen := w.drainSeen
		w.mu.Unlock()
		end := d.undrainRev[string(w.color)]
		if !seen.IsZero() && c.trigger.After(seen) && (end == 0 || c.rev < end) {
			d.work.violation(fmt.Sprintf("%s ran item %s for the trigger at %s, %v after its drains showed %s drained",
				c.exec, c.item, c.trigger.Format("15:04:05.000"), c.trigger.Sub(seen).Round(time.Millisecond), w.color))
		}
	}
	return nil
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
	once sync.Once
	wg   sync.WaitGroup
	work *workLog // nil in the naive mode
	// firstFail is when the first failed call came back (unix ns), 0 until one did: for the
	// guard's verdict, the first bad response.
	firstFail atomic.Int64
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
				if err != nil {
					l.firstFail.CompareAndSwap(0, time.Now().UnixNano())
				}
				l.cur.Load().add(resp.GetMessage(), err, time.Since(begin))
			}
		}()
	}
	return l
}

// close stops the callers and waits for them; it may be called more than once.
func (l *load) close() {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// header prints the table's head.
func (l *load) header(out io.Writer) {
	head := fmt.Sprintf("%-34s %8s %7s %8s %8s %10s %9s %9s", "phase", "requests", "failed", "blue", "green", "violations", "p50", "p99")
	if l.work != nil {
		head += "  mq blue/green job blue/green"
	}
	fmt.Fprintln(out, head)
}

// run performs the steps, each followed by one phase of load, printing a row per step.
func (l *load) run(out io.Writer, phase time.Duration, steps []step, total *stats) error {
	for _, st := range steps {
		s := l.begin()
		if err := st.do(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		time.Sleep(phase)
		l.end(out, st.name, s, total)
	}
	return nil
}

// begin starts counting a new row of the table: the calls completed from now on count in
// the stats it returns, until end.
func (l *load) begin() *stats {
	s := newStats()
	s.begun = time.Now()
	l.cur.Store(s)
	if l.work != nil {
		l.work.phase()
	}
	return s
}

// end stops counting s, prints its row named name and adds it to total.
func (l *load) end(out io.Writer, name string, s *stats, total *stats) {
	l.cur.Store(newStats()) // calls from now on count nowhere
	s.mu.Lock()
	s.ended = time.Now()
	s.mu.Unlock()
	row := s.row(name)
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
	ps := []*mq.Producer{mq.NewProducer(b, deploy.Blue), mq.NewProducer(b, deploy.Green), mq.NewProducer(b, deploy.None)}
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
	return sync.OnceFunc(func() { close(done); wg.Wait(); nc.Close() }), nil
}
