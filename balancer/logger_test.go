package balancer_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// capture is a slog handler that keeps every record's message and attributes as one line.
type capture struct {
	mu    *sync.Mutex
	lines *[]string
	attrs []slog.Attr
}

func newCapture() capture { return capture{mu: new(sync.Mutex), lines: new([]string)} }

func (c capture) Enabled(context.Context, slog.Level) bool { return true }

func (c capture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range c.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	c.mu.Lock()
	*c.lines = append(*c.lines, b.String())
	c.mu.Unlock()
	return nil
}

func (c capture) WithAttrs(as []slog.Attr) slog.Handler {
	c.attrs = append(c.attrs[:len(c.attrs):len(c.attrs)], as...)
	return c
}

func (c capture) WithGroup(string) slog.Handler { return c }

// find returns the first line containing every one of subs, or "".
func (c capture) find(subs ...string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
outer:
	for _, l := range *c.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue outer
			}
		}
		return l
	}
	return ""
}

// balancerLines returns the lines the balancer logged.
func (c capture) balancerLines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range *c.lines {
		if strings.Contains(l, "switchyard balancer:") || strings.Contains(l, "switchyard-balancer") {
			out = append(out, l)
		}
	}
	return out
}

// captureDefault makes slog.Default() a capture until the test ends. Tests that call it do
// not run in parallel.
func captureDefault(t *testing.T) capture {
	c := newCapture()
	old := slog.Default()
	slog.SetDefault(slog.New(c))
	t.Cleanup(func() { slog.SetDefault(old) })
	return c
}

const offlineLine = "instance says it is going offline"

func TestBalancerLogsThroughTheResolversLogger(t *testing.T) {
	c := newCluster(t)
	b := c.start(registry.Record{ID: "b"})
	b.offline.Store(true) // every answer says b is going offline: the balancer logs its mark
	def := captureDefault(t)
	own := newCapture()
	client := c.dialWith(func(rc *registry.ResolverConfig) { rc.Logger = slog.New(own) })

	if _, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the offline mark's line in ResolverConfig.Logger", func() bool {
		return own.find("INFO", offlineLine) != "" || len(def.balancerLines()) > 0
	})
	if got := def.balancerLines(); len(got) > 0 {
		t.Fatalf("the balancer logged to slog.Default(), not to ResolverConfig.Logger: %q", got)
	}
	line := own.find("INFO", offlineLine)
	for _, want := range []string{"instance=b", "component=switchyard-balancer", "target=switchyard:///greeter"} {
		if !strings.Contains(line, want) {
			t.Errorf("the offline mark's line %q lacks %s", line, want)
		}
	}
}

func TestBalancerWithoutTheResolverLogsToTheDefault(t *testing.T) {
	addr, _ := testutil.ServeGreeter(t, "b", grpc.ChainUnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(deploy.OfflineHeader, "1"))
			return h(ctx, req)
		}))
	def := captureDefault(t)
	// A resolver of the user's: endpoints with switchyard's info (an offline mark needs the
	// instance id), no logger in the state's attributes.
	r := manual.NewBuilderWithScheme("mine")
	r.InitialState(resolver.State{Endpoints: []resolver.Endpoint{
		balancer.SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}}, balancer.EndpointInfo{ID: "b", Weight: 100}),
	}})
	client := testutil.Greeter(t, "mine:///greeter", grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"`+balancer.Name+`":{}}]}`))
	if _, err := client.SayHello(context.Background(), &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the offline mark's line in slog.Default()", func() bool {
		return def.find("INFO", offlineLine, "instance=b", "component=switchyard-balancer") != ""
	})
}

func TestNoInstanceNamesTheApp(t *testing.T) {
	c := newCluster(t)
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: c.cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	client := testutil.Greeter(t, "switchyard:///nosuchapp", grpc.WithResolvers(rb))
	// Without WaitForReady the call fails as soon as the balancer reports it has nothing to
	// pick; the deadline only bounds a regression that would make it wait.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = client.SayHello(ctx, &greeterpb.HelloRequest{})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `no instance of app "nosuchapp" is registered`) ||
		!strings.Contains(st.Message(), "start one, or check the app name and the registry prefix") {
		t.Fatalf("a call of an app with no instance: %v; want UNAVAILABLE saying no instance of app \"nosuchapp\" is registered and what to do", err)
	}
}
