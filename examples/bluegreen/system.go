package main

import (
	"context"
	"log/slog"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// What both runs (the switchyard release and the naive one) build the same way: an embedded
// etcd, the three apps at v1, and the client of the gateway that the load calls.

// downstream is the app each app calls: gateway → order → inventory. Each instance dials its
// own connection to it.
var downstream = map[string]string{"gateway": "order", "order": "inventory"}

// newEtcd starts an embedded etcd (in production: your etcd cluster) and a client of it;
// stop closes both.
func newEtcd() (*etcdtest.Server, *clientv3.Client, func(), error) {
	etcd, err := etcdtest.New()
	if err != nil {
		return nil, nil, nil, err
	}
	cli, err := etcd.NewClient(etcd.Endpoints())
	if err != nil {
		etcd.Close()
		return nil, nil, nil, err
	}
	return etcd, cli, func() { cli.Close(); etcd.Close() }, nil
}

// dialer returns a dial of switchyard:///<app> through the registry resolver with
// serviceConfig ("" for switchyard's default, the weighted balancer) and opts, without rules
// or switchyard's interceptors: the load's client of the gateway, which is in no release
// channel, every client of the naive run, and the leaky middle hop's (demo.leaky).
func dialer(cli *clientv3.Client, log *slog.Logger, serviceConfig string, opts ...grpc.DialOption) func(app string) (*grpc.ClientConn, error) {
	return func(app string) (*grpc.ClientConn, error) {
		rb, err := registry.NewResolverBuilder(registry.ResolverConfig{Client: cli, Logger: log, ServiceConfig: serviceConfig})
		if err != nil {
			return nil, err
		}
		opts := append([]grpc.DialOption{grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
		return grpc.NewClient("switchyard:///"+app, opts...)
	}
}

// roundRobin is the service config of a plain gRPC client: every instance in turn, whatever
// its color.
const roundRobin = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// forwardBaggage copies the incoming baggage header onto the call, as a service propagating
// by hand does: the decision travels on, but the client's balancer does not honour it.
func forwardBaggage(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoke(withIncomingBaggage(ctx), method, req, reply, cc, opts...)
}

// forwardBaggageStream is forwardBaggage for streams.
func forwardBaggageStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, stream grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return stream(withIncomingBaggage(ctx), desc, cc, method, opts...)
}

func withIncomingBaggage(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("baggage") {
		ctx = metadata.AppendToOutgoingContext(ctx, "baggage", v)
	}
	return ctx
}

// bringUp starts the system at v1 with start — inventory and order in blue and green, then
// the gateway, colorless — and returns a client of the gateway, through dial, once the
// gateway answers; closeGateway closes its connection.
func bringUp(ctx context.Context, start func(app, color, version string) error, dial func(app string) (*grpc.ClientConn, error)) (gateway greeterpb.GreeterClient, closeGateway func(), err error) {
	for _, c := range []string{"blue", "green"} {
		for _, app := range []string{"inventory", "order"} { // callees first
			if err := start(app, c, "v1"); err != nil {
				return nil, nil, err
			}
		}
	}
	if err := start("gateway", "", "v1"); err != nil {
		return nil, nil, err
	}
	toGateway, err := dial("gateway")
	if err != nil {
		return nil, nil, err
	}
	gateway = greeterpb.NewGreeterClient(toGateway)
	if _, err := gateway.SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		_ = toGateway.Close()
		return nil, nil, err
	}
	return gateway, func() { _ = toGateway.Close() }, nil
}
