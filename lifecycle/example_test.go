package lifecycle_test

import (
	"context"
	"fmt"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
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
