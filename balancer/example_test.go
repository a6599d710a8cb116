package balancer_test

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/switchyard-go/switchyard/balancer"
)

// An instance that registered with a one-minute warmup, 15 s into its ramp, in a release
// where its color (blue) gets a 1 % canary share.
func ExampleEndpointInfo_EffectiveWeight() {
	start := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	info := balancer.EndpointInfo{ID: "order-7d9f", Color: "blue", Channel: "trade",
		Weight: 100, TrafficWeight: 100.0 / 99, StartTime: start, Warmup: time.Minute}
	now := start.Add(15 * time.Second)
	fmt.Printf("warmup factor %.2f\n", info.WarmupFactor(now))
	fmt.Printf("effective weight, both colors present: %.4f\n", info.EffectiveWeight(true, now))
	fmt.Printf("effective weight, blue alone: %.0f\n", info.EffectiveWeight(false, now))
	// Output:
	// warmup factor 0.25
	// effective weight, both colors present: 0.2525
	// effective weight, blue alone: 25
}

// A resolver of your own that hands the policy your logger: attach it to every state it
// sends. (registry's resolver does this with ResolverConfig.Logger.)
func ExampleWithLogger() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", "checkout")
	r := manual.NewBuilderWithScheme("mine")
	r.InitialState(resolver.State{
		Endpoints: []resolver.Endpoint{
			balancer.SetEndpointInfo(resolver.Endpoint{Addresses: []resolver.Address{{Addr: "10.0.0.7:9000"}}},
				balancer.EndpointInfo{ID: "order-7d9f", Weight: 100}),
		},
		Attributes: balancer.WithLogger(nil, log),
	})
	cc, err := grpc.NewClient("mine:///order", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"`+balancer.Name+`":{}}]}`))
	if err != nil {
		panic(err)
	}
	defer cc.Close()
	// Calls on cc now log their offline marks through log, not slog.Default().
}
