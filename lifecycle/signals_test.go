package lifecycle_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
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
	"github.com/switchyard-go/switchyard/window"
)

// The Instance is its components' deploy.Worker: mq and job report their work to it.
var _ deploy.Worker = (*lifecycle.Instance)(nil)

// failing answers SayHello with the code its request's name names ("" is OK), and holds a
// SayHellos stream open until the test closes release.
type failing struct {
	greeterpb.UnimplementedGreeterServer
	release chan struct{}
}

func (failing) SayHello(_ context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	switch req.GetName() {
	case "internal":
		return nil, status.Error(codes.Internal, "broken")
	case "notfound":
		return nil, status.Error(codes.NotFound, "no such greeting")
	}
	return &greeterpb.HelloReply{}, nil
}

func (f failing) SayHellos(_ *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	<-f.release
	return st.Send(&greeterpb.HelloReply{})
}

// metrics reads what an OTel SDK reader has.
type metrics struct {
	t *testing.T
	r *sdkmetric.ManualReader
}

func (m metrics) collect() metricdata.ResourceMetrics {
	m.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.r.Collect(context.Background(), &rm); err != nil {
		m.t.Fatal(err)
	}
	return rm
}

// value is the sum of metric name's int64 points (or, for a histogram, their counts) whose
// attributes include all of kvs, and whether the metric has such a point.
func (m metrics) value(name string, kvs ...attribute.KeyValue) (int64, bool) {
	m.t.Helper()
	var sum int64
	found := false
	match := func(set attribute.Set) bool {
		for _, kv := range kvs {
			if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
				return false
			}
		}
		found = true
		return true
	}
	for _, sm := range m.collect().ScopeMetrics {
		for _, mt := range sm.Metrics {
			if mt.Name != name {
				continue
			}
			switch d := mt.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						sum += p.Value
					}
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						sum += p.Value
					}
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						sum += int64(p.Count)
					}
				}
			default:
				m.t.Fatalf("metric %s has data of type %T", name, mt.Data)
			}
		}
	}
	return sum, found
}

func (m metrics) want(name string, want int64, kvs ...attribute.KeyValue) {
	m.t.Helper()
	if got, ok := m.value(name, kvs...); !ok || got != want {
		m.t.Errorf("%s%v = %d (found: %v), want %d", name, kvs, got, ok, want)
	}
}

func stats(t *testing.T, admin string) window.Stats {
	t.Helper()
	resp, err := http.Get("http://" + admin + window.StatsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s window.Stats
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %s, %s", window.StatsPath, resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// The signals of a blue instance of channel "sig": every request counted by method and code
// with the instance's identity, errors (Internal) told from client codes (NotFound) in the
// window, a request decided for green counted as a crossing (a plain gRPC client sends the
// baggage header), a held stream seen in flight, the state and registration gauges, a drain's
// duration; the channel's close rebuilds the attributes; GET /stats shows the same counts,
// at the admin address the record carries.
func TestSignals(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	ctl := openChannel(t, cli, "sig", 50, "greeter")
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	m := metrics{t, reader}
	inst, err := lifecycle.New(config(t, cli, "blue-1", func(c *lifecycle.Config) {
		c.Color, c.Version, c.MeterProvider = deploy.Blue, "v2", mp
	}))
	if err != nil {
		t.Fatal(err)
	}
	srv := failing{release: make(chan struct{})}
	greeterpb.RegisterGreeterServer(inst.Server(), srv)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.want("switchyard.instance.state", 1, attribute.String("switchyard.app", "greeter"),
		attribute.String("switchyard.color", "blue"), attribute.String("switchyard.state", "serving"))
	m.want("switchyard.instance.state", 0, attribute.String("switchyard.state", "drained"))
	m.want("switchyard.instance.registered", 1, attribute.String("switchyard.app", "greeter"), attribute.String("switchyard.color", "blue"))

	c := testutil.Greeter(t, inst.Addr())
	call := func(ctx context.Context, name string, want codes.Code) {
		t.Helper()
		if _, err := c.SayHello(ctx, &greeterpb.HelloRequest{Name: name}); status.Code(err) != want {
			t.Fatalf("SayHello(%q) = %v, want %v", name, err, want)
		}
	}
	decided := func(color string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "baggage",
			deploy.BaggageKey+"="+url.PathEscape("sig="+color))
	}
	call(context.Background(), "", codes.OK)
	call(decided("blue"), "", codes.OK)
	call(decided("green"), "", codes.OK) // a crossing
	call(context.Background(), "internal", codes.Internal)
	call(context.Background(), "notfound", codes.NotFound)

	// A stream held open is in flight.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.SayHellos(ctx, &greeterpb.HelloRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	inFlight := []attribute.KeyValue{attribute.String("switchyard.app", "greeter"), attribute.String("switchyard.color", "blue")}
	testutil.Eventually(t, "the held stream in flight", func() bool {
		n, _ := m.value("switchyard.server.in_flight", inFlight...)
		return n == 1
	})
	close(srv.release)
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the stream no longer in flight", func() bool {
		n, _ := m.value("switchyard.server.in_flight", inFlight...)
		return n == 0
	})

	id := []attribute.KeyValue{attribute.String("switchyard.app", "greeter"), attribute.String("switchyard.color", "blue"),
		attribute.String("switchyard.version", "v2"), attribute.String("switchyard.channel", "sig")}
	hello := append(id, attribute.String("rpc.method", greeterpb.Greeter_SayHello_FullMethodName))
	code := func(c codes.Code) attribute.KeyValue { return attribute.Int("rpc.grpc.status_code", int(c)) }
	m.want("switchyard.server.requests", 3, append(hello, code(codes.OK))...)
	m.want("switchyard.server.requests", 1, append(hello, code(codes.Internal))...)
	m.want("switchyard.server.requests", 1, append(hello, code(codes.NotFound))...)
	m.want("switchyard.server.requests", 1, append(id, attribute.String("rpc.method", greeterpb.Greeter_SayHellos_FullMethodName), code(codes.OK))...)
	m.want("switchyard.server.duration", 5, hello...)
	m.want("switchyard.server.crossings", 1, attribute.String("switchyard.app", "greeter"), attribute.String("switchyard.color", "blue"),
		attribute.String("switchyard.channel", "sig"), attribute.String("switchyard.decided", "green"))

	// The record says where the admin server is; its /stats has the same counts.
	recs, _, err := registry.List(context.Background(), cli, "", "greeter")
	if err != nil || len(recs) != 1 {
		t.Fatalf("List: %v %+v", err, recs)
	}
	host, _, _ := net.SplitHostPort(inst.Addr())
	_, port, _ := net.SplitHostPort(inst.AdminAddr())
	if recs[0].Admin != net.JoinHostPort(host, port) {
		t.Fatalf("record's admin %q, want %s (the gRPC address's host, the admin port)", recs[0].Admin, net.JoinHostPort(host, port))
	}
	inst.DidWork(deploy.MessageWork, false)
	inst.DidWork(deploy.JobWork, true)
	s := stats(t, recs[0].Admin)
	sum := s.Window.Sum(window.Seconds * time.Second)
	if s.App != "greeter" || s.ID != "blue-1" || s.Color != "blue" || s.Version != "v2" || s.Channel != "sig" ||
		s.Addr != inst.Addr() || s.State != "serving" || s.InFlight != 0 {
		t.Errorf("/stats identity: %+v", s)
	}
	if sum.Requests != 6 || sum.Errors != 1 || sum.Crossings != 1 || sum.Messages != 1 || sum.JobRuns != 1 || sum.JobErrors != 1 {
		t.Errorf("/stats window over the last minute: %+v; want 6 requests, 1 error (Internal; NotFound is the client's), 1 crossing, 1 message, 1 failed job run", sum)
	}

	// The channel closes: requests are counted with no channel, and none crosses.
	if _, err := ctl.Finish(context.Background(), "sig"); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, cli, "blue-1", "", 100)
	call(decided("green"), "", codes.OK)
	m.want("switchyard.server.requests", 1, attribute.String("switchyard.channel", ""), code(codes.OK))
	m.want("switchyard.server.crossings", 1)

	if err := inst.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.want("switchyard.instance.drain.duration", 1, attribute.String("switchyard.app", "greeter"), attribute.String("switchyard.color", "blue"))
	m.want("switchyard.instance.state", 1, attribute.String("switchyard.state", "drained"))
	m.want("switchyard.instance.state", 0, attribute.String("switchyard.state", "serving"))
	m.want("switchyard.instance.registered", 0)
	if s := stats(t, inst.AdminAddr()); s.State != "drained" || s.Channel != "" {
		t.Errorf("/stats after the drain: state %q channel %q, want drained and no channel", s.State, s.Channel)
	}
}
