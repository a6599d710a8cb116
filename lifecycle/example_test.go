package lifecycle_test

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/traffic"
)

// An instance starts, serves, and goes offline. In a real main, inst.Run(ctx) does the same
// and waits for SIGTERM in between.
func Example() {
	cli, stop := etcdtest.ForExample() // an embedded etcd; use your cluster's client instead
	defer stop()

	inst, err := lifecycle.New(lifecycle.Config{
		Client: cli, App: "greeter", ID: "greeter-1", Color: "blue",
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", // defaults :9000 and :8081
		Logger: testutil.Silent,
	})
	if err != nil {
		panic(err)
	}
	greeterpb.RegisterGreeterServer(inst.Server(), &greeterpb.Server{Instance: "greeter-1"})
	if err := inst.Start(context.Background()); err != nil {
		panic(err)
	}
	st := inst.Status()
	fmt.Println(st.State, st.Registered, "ready:", st.Ready, "traffic weight:", st.TrafficWeight)

	if err := inst.Offline(context.Background()); err != nil {
		panic(err)
	}
	st = inst.Status()
	fmt.Println(st.State, st.Registered, "offline flag:", st.Offline)
	// Output:
	// serving registered ready: true traffic weight: 100
	// stopped closed offline flag: true
}

// worker is a component that follows its instance's drains, as an mq.Consumer does.
type worker struct{ drains deploy.Drains }

func (w worker) Start(context.Context) error {
	d, _ := w.drains.Drained()
	fmt.Printf("worker of a %s instance starts; drained: %v\n", w.drains.Color(), d.Of(w.drains.Color()))
	return nil
}

func (w worker) Stop(context.Context) error { fmt.Println("worker stops"); return nil }

// Components are built with the instance as their deploy.Drains and appended before Start.
// Blue is drained before this blue instance starts: its worker knows from its start.
func ExampleInstance_Append() {
	cli, stop := etcdtest.ForExample()
	defer stop()
	ctl, _ := traffic.NewController(traffic.Config{Client: cli})
	_, _ = ctl.Open(context.Background(), "trade", []string{"greeter"})
	_, _ = ctl.Shift(context.Background(), "trade", 0) // blue drained

	inst, err := lifecycle.New(lifecycle.Config{
		Client: cli, App: "greeter", ID: "greeter-1", Color: deploy.Blue,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: testutil.Silent,
	})
	if err != nil {
		panic(err)
	}
	inst.Append(worker{drains: inst})
	if err := inst.Start(context.Background()); err != nil {
		panic(err)
	}
	_ = inst.Offline(context.Background())
	// Output:
	// worker of a blue instance starts; drained: true
	// worker stops
}

// A service that calls another dials it through its instance, typically before Start; calls
// made under a request's context keep that request's sticky decision downstream.
func ExampleInstance_Dial() {
	cli, stop := etcdtest.ForExample()
	defer stop()
	ctx := context.Background()
	newInstance := func(app, id string) *lifecycle.Instance {
		inst, err := lifecycle.New(lifecycle.Config{
			Client: cli, App: app, ID: id, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: testutil.Silent,
		})
		if err != nil {
			panic(err)
		}
		return inst
	}
	inventory := newInstance("inventory", "inventory-1")
	greeterpb.RegisterGreeterServer(inventory.Server(), &greeterpb.Server{Instance: "inventory-1"})
	if err := inventory.Start(ctx); err != nil {
		panic(err)
	}
	defer func() { _ = inventory.Offline(ctx) }()

	order := newInstance("order", "order-1")
	toInventory, err := order.Dial("inventory") // connects nothing until the first call
	if err != nil {
		panic(err)
	}
	defer toInventory.Close()
	// ... register order's server, whose handlers call inventory through toInventory ...
	if err := order.Start(ctx); err != nil {
		panic(err)
	}
	defer func() { _ = order.Offline(ctx) }()

	resp, err := greeterpb.NewGreeterClient(toInventory).SayHello(ctx, &greeterpb.HelloRequest{}, grpc.WaitForReady(true))
	if err != nil {
		panic(err)
	}
	fmt.Println("answered by", resp.GetInstance())
	// Output:
	// answered by inventory-1
}
