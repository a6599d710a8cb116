package registry_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// A consumer dials an app by name; the resolver finds its instances in etcd.
func ExampleNewResolverBuilder() {
	cli, stop := etcdtest.ForExample() // an embedded etcd; use your cluster's client instead
	defer stop()
	silent := slog.New(slog.NewTextHandler(io.Discard, nil))

	// A provider: serve, then register.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := grpc.NewServer()
	greeterpb.RegisterGreeterServer(srv, &greeterpb.Server{Instance: "greeter-1"})
	go srv.Serve(ln)
	defer srv.Stop()
	reg, err := registry.NewRegistrar(registry.Config{
		Client:   cli,
		Instance: registry.Record{App: "greeter", ID: "greeter-1", Addr: ln.Addr().String()},
		Logger:   silent,
	})
	if err != nil {
		panic(err)
	}
	defer reg.Close(context.Background())
	if err := reg.Register(context.Background()); err != nil {
		panic(err)
	}

	// The consumer.
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: silent})
	if err != nil {
		panic(err)
	}
	conn, err := grpc.NewClient("switchyard:///greeter", grpc.WithResolvers(rb),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	resp, err := greeterpb.NewGreeterClient(conn).SayHello(context.Background(),
		&greeterpb.HelloRequest{Name: "example"}, grpc.WaitForReady(true))
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.GetMessage(), "from", resp.GetInstance())
	// Output: hello example from greeter-1
}
