// Command quickstart shows switchyard's registry and resolver end to end, in one process:
// an embedded etcd, two instances of a greeter service registering themselves, and a consumer
// calling switchyard:///greeter. It deregisters one instance and shows its traffic move to the
// other without a single failed call, then exits (non-zero if any call failed).
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// An embedded etcd for the demo. In production, connect to your etcd cluster instead.
	etcd, err := etcdtest.New()
	if err != nil {
		return err
	}
	defer etcd.Close()
	cli, err := etcd.NewClient(etcd.Endpoints())
	if err != nil {
		return err
	}
	defer cli.Close()
	fmt.Println("etcd running at", etcd.Endpoints()[0])

	// Providers: each serves the greeter, then registers itself.
	var regs []*registry.Registrar
	for _, id := range []string{"greeter-a", "greeter-b"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := grpc.NewServer()
		greeterpb.RegisterGreeterServer(srv, &greeterpb.Server{Instance: id})
		go func() { _ = srv.Serve(ln) }()
		defer srv.Stop()

		reg, err := registry.NewRegistrar(registry.Config{
			Client:   cli,
			Instance: registry.Record{App: "greeter", ID: id, Addr: ln.Addr().String(), Version: "v1"},
			Logger:   logger,
		})
		if err != nil {
			return err
		}
		defer reg.Close(ctx)
		if err := reg.Register(ctx); err != nil {
			return err
		}
		fmt.Printf("registered %s at %s\n", id, ln.Addr())
		regs = append(regs, reg)
	}

	// The consumer: dial the app by name through switchyard's resolver.
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: logger})
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("switchyard:///greeter", grpc.WithResolvers(rb),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	greeter := greeterpb.NewGreeterClient(conn)

	failed := 0
	call := func(n int) map[string]int {
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := greeter.SayHello(cctx, &greeterpb.HelloRequest{Name: "quickstart"}, grpc.WaitForReady(i == 0))
			cancel()
			if err != nil {
				failed++
				fmt.Println("  call failed:", err)
				continue
			}
			seen[resp.GetInstance()]++
		}
		return seen
	}

	fmt.Println("\n20 calls with both instances registered:")
	fmt.Println(" ", summary(call(20)))

	fmt.Println("\nderegistering greeter-a (it keeps serving whatever still reaches it)...")
	if err := regs[0].Deregister(ctx); err != nil {
		return err
	}
	// The consumer learns of it through its etcd watch, usually within milliseconds; calls
	// made meanwhile still succeed on greeter-a, which is still up. Keep calling until a
	// round of 10 calls no longer reaches greeter-a.
	deadline := time.Now().Add(30 * time.Second)
	for call(10)["greeter-a"] > 0 {
		if time.Now().After(deadline) {
			return errors.New("greeter-a still receives calls 30s after deregistering")
		}
	}
	fmt.Println("\n20 calls after greeter-a deregistered:")
	fmt.Println(" ", summary(call(20)))

	if failed > 0 {
		return fmt.Errorf("%d calls failed", failed)
	}
	fmt.Println("\nno call failed.")
	return nil
}

func summary(seen map[string]int) string {
	var parts []string
	for id, n := range seen {
		parts = append(parts, fmt.Sprintf("%s answered %d", id, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
