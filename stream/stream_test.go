package stream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// follower streams the numbers from the request's Name (a position) up to Count, the way a
// long stream of events is served: it stops sending when its instance begins to drain. The
// first stream to reach pauseAt waits there for the drain, so the test drains mid-stream.
type follower struct {
	greeterpb.UnimplementedGreeterServer
	id      string
	inst    *lifecycle.Instance
	pauseAt int
	paused  *sync.Once
}

func (f *follower) SayHellos(req *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	from, _ := strconv.Atoi(req.GetName())
	for k := from; k < int(req.GetCount()); k++ {
		if k == f.pauseAt {
			f.paused.Do(func() {
				select {
				case <-f.inst.GoingOffline():
				case <-st.Context().Done():
				}
			})
		}
		select {
		case <-f.inst.GoingOffline():
			return nil // end cleanly: the caller resumes elsewhere
		default:
		}
		if err := st.Send(&greeterpb.HelloReply{Instance: f.id, Message: strconv.Itoa(k)}); err != nil {
			return err
		}
	}
	return nil
}

// fleet starts two instances of app "greeter" serving a follower that pauses at pauseAt, and
// returns them by id with a client of switchyard:///greeter.
func fleet(t *testing.T, pauseAt int) (map[string]*lifecycle.Instance, greeterpb.GreeterClient) {
	cli := etcdtest.Start(t).Client(t)
	once := new(sync.Once)
	insts := map[string]*lifecycle.Instance{}
	for _, id := range []string{"a", "b"} {
		inst, err := lifecycle.New(lifecycle.Config{
			Client: cli, App: "greeter", ID: id, Warmup: -1,
			ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
			QuietPeriod: 50 * time.Millisecond, MaxDrain: 5 * time.Second, StopTimeout: 3 * time.Second,
			TTL: 2 * time.Second, Logger: testutil.Logger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		greeterpb.RegisterGreeterServer(inst.Server(), &follower{id: id, inst: inst, pauseAt: pauseAt, paused: once})
		t.Cleanup(func() { _ = inst.Offline(context.Background()) })
		if err := inst.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		insts[id] = inst
	}
	return insts, dial(t, cli)
}

func dial(t *testing.T, cli *clientv3.Client) greeterpb.GreeterClient {
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return testutil.Greeter(t, "switchyard:///greeter", grpc.WithResolvers(rb))
}

// follow opens the stream from next.
func follow(c greeterpb.GreeterClient, next *int, total int) func(context.Context) (grpc.ServerStreamingClient[greeterpb.HelloReply], error) {
	return func(ctx context.Context) (grpc.ServerStreamingClient[greeterpb.HelloReply], error) {
		return c.SayHellos(ctx, &greeterpb.HelloRequest{Name: strconv.Itoa(*next), Count: int32(total)}, grpc.WaitForReady(true))
	}
}

func TestResumeCarriesAStreamAcrossADrain(t *testing.T) {
	const total, pauseAt = 100, 10
	insts, client := fleet(t, pauseAt)
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	var (
		next, opens int
		servedBy    []string
		drained     = make(chan error, 1)
	)
	open := follow(client, &next, total)
	err := stream.Resume(ctx, func(ctx context.Context) (grpc.ServerStreamingClient[greeterpb.HelloReply], error) {
		opens++
		return open(ctx)
	}, func(r *greeterpb.HelloReply) error {
		k, _ := strconv.Atoi(r.GetMessage())
		if k != next {
			return fmt.Errorf("got %d, want %d: a message lost or repeated", k, next)
		}
		next++
		servedBy = append(servedBy, r.GetInstance())
		if k == pauseAt-1 { // the serving instance is about to pause: drain it
			go func() { drained <- insts[r.GetInstance()].Drain(context.Background()) }()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Resume: %v after %d messages", err, next)
	}
	// One resume, or a few more: gRPC may pick the draining instance again before the first
	// stream's trailer has taken it out of the picker; such a stream ends drained at once,
	// empty, and Resume opens it again.
	if next != total || opens < 2 {
		t.Fatalf("%d of %d messages in %d opens; want all, in 2 or more", next, total, opens)
	}
	first, second := servedBy[0], servedBy[pauseAt]
	if first == second || servedBy[pauseAt-1] != first || servedBy[total-1] != second {
		t.Fatalf("served by %s up to %d, then %s: want the rest from the other instance", first, pauseAt-1, second)
	}
	if err := testutil.Receive(t, "the drain to finish", drained); err != nil {
		t.Fatal(err)
	}
}

// Without Resume the caller sees a plain io.EOF at the drain: that is what the helper is for.
func TestWithoutResumeADrainLooksLikeTheEnd(t *testing.T) {
	const total, pauseAt = 100, 10
	insts, client := fleet(t, pauseAt)
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	next := 0
	st, err := follow(client, &next, total)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	drained := make(chan error, 1)
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if next++; next == pauseAt {
			go func() { drained <- insts[r.GetInstance()].Drain(context.Background()) }()
		}
	}
	if next != pauseAt || !stream.Drained(st.Trailer()) {
		t.Fatalf("plain stream ended after %d messages, trailer %v; want %d and the offline flag", next, st.Trailer(), pauseAt)
	}
	if err := testutil.Receive(t, "the drain to finish", drained); err != nil {
		t.Fatal(err)
	}
}

func TestResumeReturnsHandleAndOpenErrors(t *testing.T) {
	_, client := fleet(t, -1)
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	next := 0
	stop := errors.New("enough")
	err := stream.Resume(ctx, follow(client, &next, 50), func(*greeterpb.HelloReply) error {
		if next++; next == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || next != 5 {
		t.Fatalf("Resume = %v after %d messages; want handle's error after 5", err, next)
	}
	refused := errors.New("refused")
	err = stream.Resume(ctx, func(context.Context) (grpc.ServerStreamingClient[greeterpb.HelloReply], error) { return nil, refused },
		func(*greeterpb.HelloReply) error { return nil })
	if !errors.Is(err, refused) {
		t.Fatalf("Resume = %v; want open's error", err)
	}
	next = 0
	if err := stream.Resume(ctx, follow(client, &next, 7), func(*greeterpb.HelloReply) error { next++; return nil }); err != nil || next != 7 {
		t.Fatalf("a stream that ends normally: Resume = %v after %d of 7", err, next)
	}
}

func TestDrained(t *testing.T) {
	for _, c := range []struct {
		md   metadata.MD
		want bool
	}{
		{nil, false},
		{metadata.Pairs("other", "1"), false},
		{metadata.Pairs(deploy.OfflineHeader, "0"), false},
		{metadata.Pairs(deploy.OfflineHeader, "1"), true},
		{metadata.Pairs(deploy.OfflineHeader, "0", deploy.OfflineHeader, "1"), true},
	} {
		if got := stream.Drained(c.md); got != c.want {
			t.Errorf("Drained(%v) = %v, want %v", c.md, got, c.want)
		}
	}
}
