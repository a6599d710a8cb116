package shiftbench_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// The channel and its two apps. Instance i is of apps[i%2], blue when (i/2) is even; consumer
// j calls apps[j%2].
const channel = "shift"

var apps = [2]string{"alpha", "beta"}

// config is one fleet.
type config struct {
	n, m  int  // instances, consumers
	rules bool // consumers pass their rule client to the resolver (ResolverConfig.Rules)
}

func (c config) String() string {
	mode := "records"
	if c.rules {
		mode = "rules"
	}
	return fmt.Sprintf("%dx%d/%s", c.n, c.m, mode)
}

// Buffers of the in-memory connections: small, since the harness sends no traffic to speak of
// and 25,000 connections with gRPC's default 32 KB buffers on both sides take gigabytes.
const (
	pipeBuf = 8 << 10
	grpcBuf = 8 << 10
)

// waitFor bounds every wait of the harness for the fleet to do something (a shift to reach
// every consumer, a consumer to connect): generous, since 1,000×50 in the records mode takes
// many seconds per shift on two cores.
const waitFor = 5 * time.Minute

// fleet is the instances, the consumers, etcd and the controller.
type fleet struct {
	cfg     config
	etcd    *etcdtest.Server
	clients []*clientv3.Client // every etcd client, closed last
	ctl     *traffic.Controller
	lis     map[string]*bufconn.Listener // instance address → its listener; fixed once consumers dial
	insts   []*instance
	cons    []*consumer
	cur     atomic.Pointer[round] // the shift in progress, for the instances to report their re-puts
}

// instance is one registered instance that follows its app's rule as lifecycle does.
type instance struct {
	f     *fleet
	app   string
	color deploy.Color
	addr  string
	reg   *registry.Registrar
	rules *traffic.Rules
	unsub func()
	srv   *grpc.Server
}

// consumer is one ClientConn to an app, observed by its probe.
type consumer struct {
	app   string
	rules *traffic.Rules // nil in the records mode
	cc    *grpc.ClientConn
	probe *probe
}

// rulesAvailable reports whether registry.ResolverConfig has the Rules field a traffic.Rules
// can be assigned to (issue 14); setRules assigns it. Reflection keeps the harness building on
// code from before the field existed, so that the same harness measures before and after.
func rulesAvailable() bool {
	var cfg registry.ResolverConfig
	return setRules(&cfg, new(traffic.Rules))
}

func setRules(cfg *registry.ResolverConfig, rules *traffic.Rules) bool {
	f := reflect.ValueOf(cfg).Elem().FieldByName("Rules")
	if !f.IsValid() || !f.CanSet() || !reflect.TypeOf(rules).AssignableTo(f.Type()) {
		return false
	}
	f.Set(reflect.ValueOf(rules))
	return true
}

// newFleet starts etcd, opens the channel at 50 %, starts the instances, connects the
// consumers, waits until every consumer has every endpoint READY, and makes one shift (to
// 80 %) so that the fleet is settled and warm.
func newFleet(ctx context.Context, cfg config) (f *fleet, err error) {
	if cfg.n < 4 || cfg.n%4 != 0 || cfg.m < 2 {
		return nil, fmt.Errorf("shiftbench: %v: want instances a multiple of 4 and at least 2 consumers", cfg)
	}
	if cfg.rules && !rulesAvailable() {
		return nil, errNoRules
	}
	f = &fleet{cfg: cfg, lis: map[string]*bufconn.Listener{}}
	if f.etcd, err = etcdtest.New(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	ctlCli, err := f.newClient()
	if err != nil {
		return f, err
	}
	// The controller waits as long as the harness: at 1,000×50 in the records mode the fleet's
	// storm can keep etcd (in this process) from answering within the default 5 s.
	if f.ctl, err = traffic.NewController(traffic.Config{Client: ctlCli, Logger: testutil.Silent, RequestTimeout: waitFor}); err != nil {
		return f, err
	}
	if _, err := f.ctl.Open(ctx, channel, apps[:]); err != nil {
		return f, err
	}

	// Instances: one etcd client per 25, as a stand-in for one per process.
	var instClients []*clientv3.Client
	for range (cfg.n + 24) / 25 {
		c, err := f.newClient()
		if err != nil {
			return f, err
		}
		instClients = append(instClients, c)
	}
	f.insts = make([]*instance, cfg.n)
	for i := range f.insts {
		in := &instance{f: f, app: apps[i%2], color: deploy.Blue, addr: fmt.Sprintf("10.%d.%d.%d:9000", i%2, i/256, i%256)}
		if (i/2)%2 == 1 {
			in.color = deploy.Green
		}
		l := bufconn.Listen(pipeBuf)
		in.srv = grpc.NewServer(grpc.ReadBufferSize(grpcBuf), grpc.WriteBufferSize(grpcBuf), grpc.SharedWriteBuffer(true))
		greeterpb.RegisterGreeterServer(in.srv, &greeterpb.Server{Instance: fmt.Sprintf("%s-%d", in.app, i)})
		go func() { _ = in.srv.Serve(l) }()
		f.lis[in.addr] = l
		f.insts[i] = in
	}
	err = parallel(len(f.insts), 8, func(i int) error {
		return f.insts[i].start(ctx, instClients[i%len(instClients)], fmt.Sprintf("%s-%d", f.insts[i].app, i))
	})
	if err != nil {
		return f, err
	}

	progress("%v: %d instances registered", cfg, cfg.n)

	// Consumers connect one after the other: 50 connect storms at once on two cores would
	// only make each take 50 times as long.
	f.cons = make([]*consumer, cfg.m)
	for j := range f.cons {
		if f.cons[j], err = f.newConsumer(ctx, j); err != nil {
			return f, err
		}
		if err := f.cons[j].probe.waitReady(cfg.n / 2); err != nil {
			return f, err
		}
		progress("%v: consumer %d connected", cfg, j)
	}
	if _, err := f.shift(ctx, 80); err != nil {
		return f, fmt.Errorf("shiftbench: warm-up shift: %w", err)
	}
	return f, nil
}

// progress reports the steps of building a fleet on stderr with -test.v.
func progress(format string, args ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "%s shiftbench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

var errNoRules = errors.New("shiftbench: registry.ResolverConfig has no Rules field that takes a *traffic.Rules; the rules mode needs it")

func (f *fleet) newClient() (*clientv3.Client, error) {
	c, err := f.etcd.NewClient(f.etcd.DirectEndpoints())
	if err == nil {
		f.clients = append(f.clients, c)
	}
	return c, err
}

// start registers the instance with its app's traffic as the rule has it now, and follows the
// rule from then on.
func (in *instance) start(ctx context.Context, cli *clientv3.Client, id string) error {
	var err error
	if in.rules, err = traffic.NewRules(ctx, traffic.Config{Client: cli, Logger: testutil.Silent}); err != nil {
		return err
	}
	ch, tw := in.trafficOf()
	in.reg, err = registry.NewRegistrar(registry.Config{Client: cli, Logger: testutil.Silent, Instance: registry.Record{
		ID: id, App: in.app, Addr: in.addr, Color: in.color, Channel: ch, TrafficWeight: tw,
	}})
	if err != nil {
		return err
	}
	if err := in.reg.Register(ctx); err != nil {
		return err
	}
	in.unsub = in.rules.Subscribe("", in.onEvent)
	return nil
}

// trafficOf is lifecycle's: the channel and traffic weight the record should carry now.
func (in *instance) trafficOf() (string, float64) {
	r, ok := in.rules.ChannelOf(in.app)
	if !ok {
		return "", deploy.DefaultWeight
	}
	return r.Channel, traffic.TrafficWeight(r, in.color)
}

// onEvent is lifecycle's re-put: when the app's channel or traffic weight changes, Update the
// record, on the rule client's subscriber goroutine.
func (in *instance) onEvent(e traffic.Event) {
	cur := in.reg.Record()
	if e.Channel != cur.Channel && !e.Rule.Has(in.app) {
		return
	}
	ch, tw := in.trafficOf()
	if ch != cur.Channel || tw != cur.TrafficWeight {
		// Lifecycle leaves a failed re-put to the Registrar's background retry; the harness
		// asks again until the write is done, so that it can tell when it is.
		var err error
		for try := 0; try == 0 || err != nil && !errors.Is(err, registry.ErrClosed) && try < 100; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), registry.DefaultRequestTimeout)
			err = in.reg.Update(ctx, func(r *registry.Record) { r.Channel, r.TrafficWeight = ch, tw })
			cancel()
		}
		if r := in.f.cur.Load(); err == nil && r != nil && near(tw, r.want(in.color)) {
			r.donePut()
		}
	}
}

func (in *instance) stop() {
	if in.unsub != nil {
		in.unsub()
	}
	if in.reg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), registry.DefaultRequestTimeout)
		_ = in.reg.Close(ctx)
		cancel()
	}
	if in.rules != nil {
		in.rules.Close()
	}
	in.srv.Stop()
}

// newConsumer connects consumer j to its app with its own etcd client (and rule client in the
// rules mode) and an observed balancer.
func (f *fleet) newConsumer(ctx context.Context, j int) (*consumer, error) {
	c := &consumer{app: apps[j%2]}
	cli, err := f.newClient()
	if err != nil {
		return nil, err
	}
	c.probe = newProbe(f)
	rc := registry.ResolverConfig{Client: cli, Logger: testutil.Silent, ServiceConfig: c.probe.serviceConfig()}
	if f.cfg.rules {
		if c.rules, err = traffic.NewRules(ctx, traffic.Config{Client: cli, Logger: testutil.Silent}); err != nil {
			return nil, err
		}
		if !setRules(&rc, c.rules) {
			c.rules.Close()
			return nil, errNoRules
		}
	}
	rb, err := registry.NewResolverBuilder(rc)
	if err != nil {
		return nil, err
	}
	c.cc, err = grpc.NewClient("switchyard:///"+c.app, grpc.WithResolvers(rb),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(f.dial),
		grpc.WithReadBufferSize(grpcBuf), grpc.WithWriteBufferSize(grpcBuf), grpc.WithSharedWriteBuffer(true))
	if err != nil {
		return nil, err
	}
	c.cc.Connect()
	return c, nil
}

// dial connects to the instance at addr in memory.
func (f *fleet) dial(ctx context.Context, addr string) (net.Conn, error) {
	l, ok := f.lis[addr]
	if !ok {
		return nil, fmt.Errorf("shiftbench: no instance at %s", addr)
	}
	return l.DialContext(ctx)
}

func (f *fleet) close() {
	for _, c := range f.cons {
		if c == nil {
			continue
		}
		_ = c.cc.Close()
		if c.rules != nil {
			c.rules.Close()
		}
		probes.Delete(c.probe.id)
	}
	_ = parallel(len(f.insts), 8, func(i int) error {
		if f.insts[i] != nil {
			f.insts[i].stop()
		}
		return nil
	})
	for _, l := range f.lis {
		_ = l.Close()
	}
	for _, c := range f.clients {
		_ = c.Close()
	}
	if f.etcd != nil {
		f.etcd.Close()
	}
}

// result is one shift.
type result struct {
	applied time.Duration // Shift returned → the last consumer applied the split
	settled time.Duration // Shift returned → every instance re-put its record and every consumer saw it
	cpu     time.Duration // process CPU from before Shift to settled
	pickers []int         // per consumer connection, from Shift to settled
}

// shift shifts the channel to percent blue and waits until every consumer has settled.
func (f *fleet) shift(ctx context.Context, percent float64) (result, error) {
	rule := traffic.Rule{Channel: channel, Releasing: true, BluePercent: percent}
	r := newRound(len(f.cons), traffic.TrafficWeight(rule, deploy.Blue), traffic.TrafficWeight(rule, deploy.Green), f.cfg.n/2)
	for _, c := range f.cons {
		c.probe.arm(r)
	}
	r.expectPuts(f.insts)
	f.cur.Store(r)
	defer f.cur.Store(nil)
	cpu0 := cpuTime()
	if _, err := f.ctl.Shift(ctx, channel, percent); err != nil {
		return result{}, err
	}
	t0 := time.Now()
	if err := wait(r.applied, "every consumer to apply the split"); err != nil {
		return result{}, err
	}
	if err := wait(r.written, "every instance to re-put its record"); err != nil {
		return result{}, err
	}
	if err := wait(r.settled, "every consumer to see every re-put record"); err != nil {
		return result{}, err
	}
	res := result{cpu: cpuTime() - cpu0, settled: time.Since(t0)}
	for _, c := range f.cons {
		applied, _, pickers := c.probe.disarm()
		res.applied = max(res.applied, applied.Sub(t0))
		res.pickers = append(res.pickers, pickers)
	}
	return res, nil
}

func wait(ch <-chan struct{}, what string) error {
	t := time.NewTimer(waitFor)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return fmt.Errorf("shiftbench: timed out after %v waiting for %s", waitFor, what)
	}
}

// round is one shift as the probes see it: the traffic weights every endpoint must carry, and
// the consumers that have applied them and settled.
type round struct {
	blue, green       float64
	endpoints         int
	m                 int32
	nApplied, nSettle atomic.Int32
	applied, settled  chan struct{} // closed when every consumer has
	n, nPut           int32         // instances; re-puts done
	written           chan struct{} // closed when every instance has re-put its record
}

func newRound(m int, blue, green float64, endpoints int) *round {
	return &round{blue: blue, green: green, endpoints: endpoints, m: int32(m), applied: make(chan struct{}), settled: make(chan struct{}),
		written: make(chan struct{})}
}

// expectPuts sets how many instances will re-put their record: those whose weight changes.
func (r *round) expectPuts(insts []*instance) {
	for _, in := range insts {
		if !near(in.reg.Record().TrafficWeight, r.want(in.color)) {
			r.n++
		}
	}
	if r.n == 0 {
		close(r.written)
	}
}

func (r *round) donePut() {
	if atomic.AddInt32(&r.nPut, 1) == r.n {
		close(r.written)
	}
}

func (r *round) want(c deploy.Color) float64 {
	if c == deploy.Green {
		return r.green
	}
	return r.blue
}

func (r *round) doneApplied() {
	if r.nApplied.Add(1) == r.m {
		close(r.applied)
	}
}

func (r *round) doneSettled() {
	if r.nSettle.Add(1) == r.m {
		close(r.settled)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := f(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// percentile is the nearest-rank p-th percentile of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
