package shiftbench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
)

// The probed policy: the real switchyard_weighted, built through balancer.Get, between gRPC
// and a probe that sees every resolver state it accepts and every picker it sends. The
// service config names the probe: {"shiftbench_probed":{"probe":N}}.
const probedName = "shiftbench_probed"

func init() { gbalancer.Register(probedBuilder{}) }

var (
	probes    sync.Map // id → *probe
	nextProbe atomic.Int64
)

type probedConfig struct {
	serviceconfig.LoadBalancingConfig
	Probe int64 `json:"probe"`
}

type probedBuilder struct{}

func (probedBuilder) Name() string { return probedName }

func (probedBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var c probedConfig
	if err := json.Unmarshal(js, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (probedBuilder) Build(cc gbalancer.ClientConn, opts gbalancer.BuildOptions) gbalancer.Balancer {
	return &probedBalancer{cc: cc, opts: opts}
}

// probedBalancer builds the real balancer at the first update, which names the probe.
type probedBalancer struct {
	cc    gbalancer.ClientConn
	opts  gbalancer.BuildOptions
	p     *probe
	inner gbalancer.Balancer
	icfg  serviceconfig.LoadBalancingConfig
}

func (b *probedBalancer) UpdateClientConnState(s gbalancer.ClientConnState) error {
	if b.inner == nil {
		cfg, _ := s.BalancerConfig.(*probedConfig)
		if cfg == nil {
			return fmt.Errorf("%s: no probe in the config", probedName)
		}
		p, ok := probes.Load(cfg.Probe)
		if !ok {
			return fmt.Errorf("%s: probe %d is gone", probedName, cfg.Probe)
		}
		b.p = p.(*probe)
		b.p.ClientConn = b.cc
		real := gbalancer.Get(balancer.Name)
		if parser, ok := real.(gbalancer.ConfigParser); ok {
			icfg, err := parser.ParseConfig(json.RawMessage(`{}`))
			if err != nil {
				return err
			}
			b.icfg = icfg
		}
		b.inner = real.Build(b.p, b.opts)
	}
	b.p.accepting(s.ResolverState)
	err := b.inner.UpdateClientConnState(gbalancer.ClientConnState{ResolverState: s.ResolverState, BalancerConfig: b.icfg})
	b.p.accepted()
	return err
}

func (b *probedBalancer) ResolverError(err error) {
	if b.inner != nil {
		b.inner.ResolverError(err)
	}
}

func (b *probedBalancer) UpdateSubConnState(gbalancer.SubConn, gbalancer.SubConnState) {}

func (b *probedBalancer) ExitIdle() {
	if b.inner != nil {
		b.inner.ExitIdle()
	}
}

func (b *probedBalancer) Close() {
	if b.inner != nil {
		b.inner.Close()
	}
}

// probe is the ClientConn the real balancer sees: it passes everything on to gRPC's and
// records the pickers, the SubConns' states, and when the balancer applied the round's split.
type probe struct {
	gbalancer.ClientConn // gRPC's; set when the balancer is built
	f                    *fleet
	id                   int64

	mu      sync.Mutex
	round   *round // armed; nil between shifts
	pickers int    // sent in total
	base    int    // pickers when armed
	// A state the balancer is applying carries the round's weights in its endpoint infos
	// (applying and settling: without Rules the infos are the records', and with Rules the
	// fleet waits for the re-puts themselves): the next picker, or the end of the update if it
	// sends none, marks the consumer applied or settled.
	applying, settling   bool
	appliedAt, settledAt time.Time
	ready                map[gbalancer.SubConn]bool // SubConns READY now
	colorOf              map[gbalancer.SubConn]deploy.Color
	colorAt              map[string]deploy.Color // address → color, from the resolver states
	last                 gbalancer.Picker
	lastState            connectivity.State
	changed              chan struct{} // closed and replaced at every picker
}

func newProbe(f *fleet) *probe {
	p := &probe{f: f, id: nextProbe.Add(1), ready: map[gbalancer.SubConn]bool{},
		colorOf: map[gbalancer.SubConn]deploy.Color{}, colorAt: map[string]deploy.Color{}, changed: make(chan struct{})}
	probes.Store(p.id, p)
	return p
}

func (p *probe) serviceConfig() string {
	return fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"probe":%d}}]}`, probedName, p.id)
}

// arm starts a round: the probe watches for the balancer applying r's weights.
func (p *probe) arm(r *round) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.round, p.base = r, p.pickers
	p.applying, p.settling = false, false
	p.appliedAt, p.settledAt = time.Time{}, time.Time{}
}

// disarm ends the round and returns when the consumer applied and settled, and the pickers it
// sent meanwhile.
func (p *probe) disarm() (applied, settled time.Time, pickers int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.round = nil
	return p.appliedAt, p.settledAt, p.pickers - p.base
}

// accepting is called before the balancer applies s.
func (p *probe) accepting(s resolver.State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ep := range s.Endpoints {
		if in, ok := balancer.EndpointInfoFrom(ep); ok {
			for _, a := range ep.Addresses {
				p.colorAt[a.Addr] = deploy.Color(in.Color)
			}
		}
	}
	r := p.round
	if r == nil || !p.settledAt.IsZero() || len(s.Endpoints) != r.endpoints {
		return
	}
	info := true
	for _, ep := range s.Endpoints {
		ei, _ := balancer.EndpointInfoFrom(ep)
		info = info && near(ei.TrafficWeight, r.want(deploy.Color(ei.Color)))
	}
	p.applying = info && p.appliedAt.IsZero()
	p.settling = info
}

// accepted is called when the balancer has applied the state: a state applied without a new
// picker is applied now (the balancer judged the picker it has still right).
func (p *probe) accepted() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mark(time.Now())
}

// mark records the round's progress at now; needs mu.
func (p *probe) mark(now time.Time) {
	if p.applying {
		p.applying, p.appliedAt = false, now
		p.round.doneApplied()
	}
	if p.settling {
		p.settling, p.settledAt = false, now
		p.round.doneSettled()
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// NewSubConn tracks the SubConn's color and whether it is READY.
func (p *probe) NewSubConn(addrs []resolver.Address, opts gbalancer.NewSubConnOptions) (gbalancer.SubConn, error) {
	var sc gbalancer.SubConn
	if listener := opts.StateListener; listener != nil {
		opts.StateListener = func(s gbalancer.SubConnState) {
			listener(s)
			p.mu.Lock()
			if s.ConnectivityState == connectivity.Ready {
				p.ready[sc] = true
			} else {
				delete(p.ready, sc)
			}
			if s.ConnectivityState == connectivity.Shutdown {
				delete(p.colorOf, sc)
			}
			p.mu.Unlock()
		}
	}
	created, err := p.ClientConn.NewSubConn(addrs, opts)
	if err == nil && len(addrs) > 0 {
		p.mu.Lock()
		sc = created
		p.colorOf[sc] = p.colorAt[addrs[0].Addr]
		p.mu.Unlock()
	}
	return created, err
}

// UpdateState passes the picker on, then counts it.
func (p *probe) UpdateState(s gbalancer.State) {
	p.ClientConn.UpdateState(s)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pickers++
	p.last, p.lastState = s.Picker, s.ConnectivityState
	if p.round != nil {
		p.mark(time.Now())
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// waitReady waits until n SubConns are READY and the balancer has sent a READY picker since.
func (p *probe) waitReady(n int) error {
	deadline := time.Now().Add(waitFor)
	for {
		p.mu.Lock()
		ok := len(p.ready) == n && p.lastState == connectivity.Ready
		changed := p.changed
		p.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
			return fmt.Errorf("shiftbench: a consumer did not get %d READY endpoints within %v", n, waitFor)
		}
	}
}

// blueShare makes n undecided picks on the latest picker and returns the share that went to
// blue endpoints.
func (p *probe) blueShare(n int) (float64, error) {
	p.mu.Lock()
	pk := p.last
	p.mu.Unlock()
	blue := 0
	for range n {
		res, err := pk.Pick(gbalancer.PickInfo{FullMethodName: "/switchyard.greeter.v1.Greeter/SayHello", Ctx: context.Background()})
		if err != nil {
			return 0, err
		}
		p.mu.Lock()
		c := p.colorOf[res.SubConn]
		p.mu.Unlock()
		if c == deploy.Blue {
			blue++
		}
		if res.Done != nil {
			res.Done(gbalancer.DoneInfo{})
		}
	}
	return float64(blue) / float64(n), nil
}
