// Package testutil holds what the switchyard tests share: waiting for an event with a
// deadline instead of sleeping, a quiet logger, and a greeter server and client over real
// gRPC on loopback. Nothing outside the module's tests should import it.
//
// The rule the suite follows: a test never sleeps to let "the other side see it". It waits
// for the thing itself (a watch revision, an etcd key, a picker update, a state change) with
// Eventually or Receive, whose deadline is generous because a loaded CI machine is slow, and
// which return as soon as the condition holds, so the deadline costs nothing when all is well.
package testutil

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
)

// Deadline is how long Eventually and Receive wait before they fail the test. It is long on
// purpose: it only matters when something is broken, and a CI runner with its CPUs
// oversubscribed can be many times slower than a laptop.
const Deadline = 30 * time.Second

// Eventually waits until cond returns true, checking at once and then at short, growing
// intervals (1 ms up to 20 ms), and fails t (t.Fatalf) if it does not within Deadline.
// what names the awaited event for the failure message: "blue drained on every consumer".
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, Deadline, what, cond)
}

// EventuallyWithin is Eventually with its own deadline, for a wait whose bound is itself
// what the test checks (a drain must be seen within the lease TTL, say).
func EventuallyWithin(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Poll(context.Background(), d, cond); err != nil {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// EventuallyNoError waits until f returns nil and fails t with f's last error if it does
// not within Deadline.
func EventuallyNoError(t testing.TB, what string, f func() error) {
	t.Helper()
	var last error
	if err := Poll(context.Background(), Deadline, func() bool { last = f(); return last == nil }); err != nil {
		t.Fatalf("timed out after %v waiting for %s; last error: %v", Deadline, what, last)
	}
}

// Poll calls cond until it returns true, ctx ends or d passes, whichever comes first; it
// returns nil when cond held and an error saying how long it waited otherwise. It is the
// loop behind Eventually, for code with no *testing.T (examples, the demo).
func Poll(ctx context.Context, d time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	wait := time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		if cond() {
			return nil
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			if cond() { // the last chance: a condition that became true as time ran out
				return nil
			}
			return fmt.Errorf("testutil: condition not met within %v: %w", d, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// Receive waits for a value on ch and fails t if none comes within Deadline (or ch is
// closed).
func Receive[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	tm := time.NewTimer(Deadline)
	defer tm.Stop()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("waiting for %s: the channel was closed", what)
		}
		return v
	case <-tm.C:
		t.Fatalf("timed out after %v waiting for %s", Deadline, what)
	}
	panic("unreachable")
}

// Silent is a logger that discards everything, for Examples and benchmarks.
var Silent = slog.New(slog.DiscardHandler)

// Logger is the logger tests hand to the code under test. It discards everything unless the
// test runs with -v; then it writes warnings and errors to stderr (SWITCHYARD_TEST_LOG=debug
// for everything). It writes to stderr rather than t.Log because the code under test logs
// from its own goroutines, which may outlive the test.
func Logger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return Silent
	}
	level := slog.LevelWarn
	if os.Getenv("SWITCHYARD_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("test", t.Name())
}

// Listen opens a TCP listener on a free loopback port, closed at cleanup.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// ServeGreeter serves the greeter (answering with id as its instance) on a loopback port
// with opts, and stops the server at cleanup. It returns the address and the server.
func ServeGreeter(t testing.TB, id string, opts ...grpc.ServerOption) (string, *grpc.Server) {
	t.Helper()
	return ServeGreeterOn(t, Listen(t), id, opts...)
}

// ServeGreeterOn is ServeGreeter on a listener of the caller's (one that counts
// connections, say).
func ServeGreeterOn(t testing.TB, ln net.Listener, id string, opts ...grpc.ServerOption) (string, *grpc.Server) {
	t.Helper()
	s := grpc.NewServer(opts...)
	greeterpb.RegisterGreeterServer(s, &greeterpb.Server{Instance: id})
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String(), s
}

// Dial opens a plaintext client connection to target with opts, closed at cleanup.
func Dial(t testing.TB, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Greeter is Dial wrapped in a greeter client.
func Greeter(t testing.TB, target string, opts ...grpc.DialOption) greeterpb.GreeterClient {
	t.Helper()
	return greeterpb.NewGreeterClient(Dial(t, target, opts...))
}

// MainParallel is a TestMain for a package whose tests spend their time waiting on etcd's
// clock (a lease TTL running out) rather than computing: it lets up to n parallel tests wait
// side by side instead of GOMAXPROCS at a time, unless -test.parallel is given, and then runs
// the tests checking for leaked goroutines (goleak, with opts).
func MainParallel(m *testing.M, n int, opts ...goleak.Option) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", fmt.Sprint(n))
	}
	goleak.VerifyTestMain(m, opts...)
}
