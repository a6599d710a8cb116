package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// naiveInstance is a plain gRPC server registered in etcd: no readiness gating, no offline
// flag, no drain, no weights — what a service without switchyard has.
type naiveInstance struct {
	srv *grpc.Server
	reg *registry.Registrar
}

// runNaive does the same v1 → v2 release as a rolling restart (order first, then inventory,
// one instance at a time) with round_robin, and returns how many requests failed.
func runNaive(out io.Writer, phase time.Duration, workers int) (failed, total int, err error) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	etcd, err := etcdtest.New()
	if err != nil {
		return 0, 0, err
	}
	defer etcd.Close()
	cli, err := etcd.NewClient(etcd.Endpoints())
	if err != nil {
		return 0, 0, err
	}
	defer cli.Close()
	dial := func(app string) (*grpc.ClientConn, error) {
		rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: log,
			ServiceConfig: `{"loadBalancingConfig":[{"round_robin":{}}]}`})
		if err != nil {
			return nil, err
		}
		return grpc.NewClient("switchyard:///"+app, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	var mu sync.Mutex
	insts := map[string]*naiveInstance{}
	start := func(app, color, version string, next *grpc.ClientConn) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		s := &server{app: app, color: color, version: version}
		if next != nil {
			s.next = greeterpb.NewGreeterClient(next)
		}
		srv := grpc.NewServer()
		greeterpb.RegisterGreeterServer(srv, s)
		go func() { _ = srv.Serve(ln) }()
		reg, err := registry.NewRegistrar(registry.Config{Client: cli, Logger: log,
			Instance: registry.Record{App: app, ID: app + "-" + color + "-" + version, Addr: ln.Addr().String(), Color: deploy.Color(color), Version: version}})
		if err != nil {
			return err
		}
		if err := reg.Register(ctx); err != nil {
			return err
		}
		mu.Lock()
		insts[app+"/"+color] = &naiveInstance{srv: srv, reg: reg}
		mu.Unlock()
		return nil
	}
	// A typical shutdown: stop serving, then (in a shutdown hook) deregister.
	stop := func(app, color string) {
		mu.Lock()
		in := insts[app+"/"+color]
		delete(insts, app+"/"+color)
		mu.Unlock()
		done := make(chan struct{})
		go func() { in.srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			in.srv.Stop()
		}
		_ = in.reg.Close(ctx)
	}
	defer func() {
		for key := range insts {
			app, color, _ := strings.Cut(key, "/")
			stop(app, color)
		}
	}()

	toInventory, err := dial("inventory")
	if err != nil {
		return 0, 0, err
	}
	defer toInventory.Close()
	toOrder, err := dial("order")
	if err != nil {
		return 0, 0, err
	}
	defer toOrder.Close()
	toGateway, err := dial("gateway")
	if err != nil {
		return 0, 0, err
	}
	defer toGateway.Close()
	for _, c := range []string{"blue", "green"} {
		if err := start("inventory", c, "v1", nil); err != nil {
			return 0, 0, err
		}
		if err := start("order", c, "v1", toInventory); err != nil {
			return 0, 0, err
		}
	}
	if err := start("gateway", "", "v1", toOrder); err != nil {
		return 0, 0, err
	}
	gateway := greeterpb.NewGreeterClient(toGateway)
	if _, err := gateway.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		return 0, 0, err
	}
	l := startLoad(ctx, gateway, workers)
	defer l.close()

	roll := func(app, color string) func() error {
		return func() error {
			stop(app, color)
			next := toInventory
			if app == "inventory" {
				next = nil
			}
			return start(app, color, "v2", next)
		}
	}
	steps := []step{
		{"all v1", func() error { return nil }, ""},
		{"roll order blue to v2", roll("order", "blue"), ""},
		{"roll order green to v2", roll("order", "green"), ""},
		{"roll inventory blue to v2", roll("inventory", "blue"), ""},
		{"roll inventory green to v2", roll("inventory", "green"), ""},
		{"all v2", func() error { return nil }, ""},
	}
	fmt.Fprintln(out, "naive rolling restart (round_robin, no switchyard lifecycle):")
	var st stats
	if err := l.run(out, phase, steps, &st); err != nil {
		return 0, 0, err
	}
	fmt.Fprintln(out)
	return st.failed, st.n, nil
}
