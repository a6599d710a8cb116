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

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// naiveInstance is a plain gRPC server registered in etcd: no readiness gating, no offline
// flag, no drain, no weights — what a service without switchyard has.
type naiveInstance struct {
	srv  *grpc.Server
	reg  *registry.Registrar
	next *grpc.ClientConn // its connection to its downstream app; nil for inventory
}

// runNaive does the same v1 → v2 release as a rolling restart (order first, then inventory,
// one instance at a time) with round_robin, and returns how many requests failed.
func runNaive(out io.Writer, phase time.Duration, workers int) (failed, total int, err error) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, cli, stopEtcd, err := newEtcd()
	if err != nil {
		return 0, 0, err
	}
	defer stopEtcd()
	dial := dialer(cli, log, roundRobin)
	var mu sync.Mutex
	insts := map[string]*naiveInstance{}
	start := func(app, color, version string) error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		s := &server{app: app, color: color, version: version}
		in := &naiveInstance{srv: grpc.NewServer()}
		if next := downstream[app]; next != "" {
			if in.next, err = dial(next); err != nil {
				return err
			}
			s.next = greeterpb.NewGreeterClient(in.next)
		}
		greeterpb.RegisterGreeterServer(in.srv, s)
		go func() { _ = in.srv.Serve(ln) }()
		in.reg, err = registry.NewRegistrar(registry.Config{Client: cli, Logger: log,
			Instance: registry.Record{App: app, ID: app + "-" + color + "-" + version, Addr: ln.Addr().String(), Color: deploy.Color(color), Version: version}})
		if err != nil {
			return err
		}
		if err := in.reg.Register(ctx); err != nil {
			return err
		}
		mu.Lock()
		insts[app+"/"+color] = in
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
		if in.next != nil {
			_ = in.next.Close()
		}
	}
	defer func() {
		for key := range insts {
			app, color, _ := strings.Cut(key, "/")
			stop(app, color)
		}
	}()

	gateway, closeGateway, err := bringUp(ctx, start, dial)
	if err != nil {
		return 0, 0, err
	}
	defer closeGateway()
	l := startLoad(ctx, gateway, workers)
	defer l.close()

	roll := func(app, color string) func() error {
		return func() error {
			stop(app, color)
			return start(app, color, "v2")
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
	l.header(out)
	if err := l.run(out, phase, steps, &st); err != nil {
		return 0, 0, err
	}
	fmt.Fprintln(out)
	return st.failed, st.n, nil
}
