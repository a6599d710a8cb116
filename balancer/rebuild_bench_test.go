package balancer

import (
	"flag"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/roundrobin"
	"google.golang.org/grpc/connectivity"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/deploy"
)

// The rebuild benchmarks drive the policies through a fake ClientConn: SubConns that connect
// when told to, no sockets. Real connections to 10,000 servers would measure the machine's
// TCP stack and the transports' goroutines, not the policy; both policies get the same fake,
// the same resolver states and the same pick_first children, so the comparison is like for
// like: everything gRPC's ClientConn does on top is the same for both and left out.
//
//	go test -run '^$' -bench 'Rebuild|ConnectStorm' -benchmem ./balancer/
//	go test -run '^$' -bench ConnectStorm -benchtime 1x -benchmem ./balancer/ -args -storm 1000,10000

var stormSizes = flag.String("storm", "1000", "endpoint counts of BenchmarkConnectStorm, comma-separated (10000 takes tens of seconds per policy)")

// fakeCC is the ClientConn of gRPC as a policy sees it, without connections.
type fakeCC struct {
	balancer.ClientConn // nil: a method not written here is not expected to be called
	subConns            []*fakeSubConn
	pickers             int                // pickers sent
	state               connectivity.State // the last aggregated state
	picker              balancer.Picker    // the last picker
}

func (cc *fakeCC) NewSubConn(addrs []resolver.Address, o balancer.NewSubConnOptions) (balancer.SubConn, error) {
	sc := &fakeSubConn{addr: addrs[0].Addr, listener: o.StateListener}
	cc.subConns = append(cc.subConns, sc)
	return sc, nil
}

func (cc *fakeCC) UpdateState(s balancer.State) {
	cc.pickers++
	cc.state, cc.picker = s.ConnectivityState, s.Picker
}

func (cc *fakeCC) MetricsRecorder() estats.MetricsRecorder { return nopRecorder{} }
func (cc *fakeCC) ResolveNow(resolver.ResolveNowOptions)   {}
func (cc *fakeCC) Target() string                          { return "switchyard:///bench" }

type nopRecorder struct{ estats.MetricsRecorder }

func (nopRecorder) RecordInt64Count(*estats.Int64CountHandle, int64, ...string)             {}
func (nopRecorder) RecordFloat64Count(*estats.Float64CountHandle, float64, ...string)       {}
func (nopRecorder) RecordInt64Histo(*estats.Int64HistoHandle, int64, ...string)             {}
func (nopRecorder) RecordFloat64Histo(*estats.Float64HistoHandle, float64, ...string)       {}
func (nopRecorder) RecordInt64Gauge(*estats.Int64GaugeHandle, int64, ...string)             {}
func (nopRecorder) RecordInt64UpDownCount(*estats.Int64UpDownCountHandle, int64, ...string) {}
func (nopRecorder) RegisterAsyncReporter(estats.AsyncMetricReporter, ...estats.AsyncMetric) func() {
	return func() {}
}

// fakeSubConn connects when ready is called, as gRPC's test SubConn does: CONNECTING, READY,
// then the health listener pick_first registers on READY.
type fakeSubConn struct {
	balancer.SubConn
	addr     string
	listener func(balancer.SubConnState)
	health   func(balancer.SubConnState)
}

func (sc *fakeSubConn) Connect()                           {}
func (sc *fakeSubConn) Shutdown()                          {}
func (sc *fakeSubConn) UpdateAddresses([]resolver.Address) {}
func (sc *fakeSubConn) RegisterHealthListener(l func(balancer.SubConnState)) {
	sc.health = l
}
func (sc *fakeSubConn) GetOrBuildProducer(balancer.ProducerBuilder) (balancer.Producer, func()) {
	return nil, func() {}
}

func (sc *fakeSubConn) ready() {
	sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Connecting})
	sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Ready})
	if sc.health != nil {
		sc.health(balancer.SubConnState{ConnectivityState: connectivity.Ready})
	}
}

// benchState is a resolver state of n endpoints as the switchyard resolver makes it: one
// address each, half blue and half green in channel trade at 10 %, every Attributes value
// new (the resolver builds each update afresh). changed > 0 gives endpoint changed-1 another
// record (weight 50).
func benchState(n, changed int) resolver.State {
	eps := make([]resolver.Endpoint, n)
	start := time.Unix(1_700_000_000, 0)
	for i := range eps {
		color, tw := deploy.Blue, 100.0/9
		if i%2 == 1 {
			color, tw = deploy.Green, 100
		}
		w := 100.0
		if i == changed-1 {
			w = 50
		}
		ep := resolver.Endpoint{Addresses: []resolver.Address{{Addr: fmt.Sprintf("10.%d.%d.%d:8080", i>>16, i>>8&255, i&255)}}}
		eps[i] = SetEndpointInfo(ep, EndpointInfo{ID: "i-" + strconv.Itoa(i), Color: color, Channel: "trade",
			Weight: w, TrafficWeight: tw, StartTime: start, Epoch: int64(i + 1)})
	}
	return resolver.State{Endpoints: eps}
}

func buildPolicy(policy string, cc *fakeCC) balancer.Balancer {
	opts := balancer.BuildOptions{Target: resolver.Target{URL: url.URL{Scheme: "switchyard", Path: "/bench"}}}
	return balancer.Get(policy).Build(cc, opts)
}

var policies = []string{roundrobin.Name, Name}

// BenchmarkRebuildOneChange: one instance's record changes among n READY endpoints; one op is
// the resolver update through the policy to the new picker.
func BenchmarkRebuildOneChange(b *testing.B) {
	for _, n := range []int{1000, 10_000} {
		states := [2]resolver.State{benchState(n, 0), benchState(n, 1+n/2)}
		for _, policy := range policies {
			// Connected once per policy (the storm takes seconds at 10,000), not per b.Run round.
			cc := &fakeCC{}
			bal := buildPolicy(policy, cc)
			if err := bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: states[0]}); err != nil {
				b.Fatal(err)
			}
			for _, sc := range cc.subConns {
				sc.ready()
			}
			if cc.state != connectivity.Ready {
				b.Fatalf("state %v after every SubConn is READY", cc.state)
			}
			b.Run(fmt.Sprintf("endpoints=%d/policy=%s", n, policy), func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					before := cc.pickers
					if err := bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: states[1-i%2]}); err != nil {
						b.Fatal(err)
					}
					if cc.pickers == before {
						b.Fatal("no new picker after the update")
					}
				}
			})
			bal.Close()
		}
	}
}

// BenchmarkConnectStorm: a consumer connects to n instances; one op is the first resolver
// update and every SubConn turning READY, each of which sends a new picker. 1,000 endpoints
// by default; -args -storm 1000,10000 for more.
func BenchmarkConnectStorm(b *testing.B) {
	for _, s := range strings.Split(*stormSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			b.Fatalf("-storm %q: want endpoint counts such as 1000,10000", *stormSizes)
		}
		state := benchState(n, 0)
		for _, policy := range policies {
			b.Run(fmt.Sprintf("endpoints=%d/policy=%s", n, policy), func(b *testing.B) {
				b.ReportAllocs()
				pickers := 0
				for i := 0; i < b.N; i++ {
					cc := &fakeCC{}
					bal := buildPolicy(policy, cc)
					if err := bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: state}); err != nil {
						b.Fatal(err)
					}
					for _, sc := range cc.subConns {
						sc.ready()
					}
					if cc.state != connectivity.Ready {
						b.Fatalf("state %v after every SubConn is READY", cc.state)
					}
					pickers += cc.pickers
					bal.Close()
				}
				b.ReportMetric(float64(pickers)/float64(b.N), "pickers/op")
			})
		}
	}
}
