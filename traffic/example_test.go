package traffic_test

import (
	"context"
	"fmt"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/traffic"
)

// An operator drives a whole blue/green release of channel "trade"; a subscriber (say, a
// message consumer that must leave a drained color) prints the events it receives.
func Example() {
	cli, stop := etcdtest.ForExample() // an embedded etcd; use your cluster's client instead
	defer stop()
	ctx := context.Background()
	cfg := traffic.Config{Client: cli, Logger: testutil.Silent}

	rules, err := traffic.NewRules(ctx, cfg)
	if err != nil {
		panic(err)
	}
	defer rules.Close()
	events := make(chan traffic.Event, 32)
	unsubscribe := rules.Subscribe("trade", func(e traffic.Event) { events <- e })
	defer unsubscribe()

	ctl, err := traffic.NewController(cfg)
	if err != nil {
		panic(err)
	}
	if _, err := ctl.Open(ctx, "trade", []string{"order", "inventory"}); err != nil {
		panic(err)
	}
	for _, percent := range []float64{0, 1, 50, 100} { // drain blue, canary, half, drain green
		if _, err := ctl.Shift(ctx, "trade", percent); err != nil {
			panic(err)
		}
	}
	if _, err := ctl.Finish(ctx, "trade"); err != nil {
		panic(err)
	}
	for i := 0; i < 11; i++ {
		fmt.Println(<-events)
	}
	// Output:
	// trade OnStart
	// trade OnFlowChange 50→0
	// trade OnEnterAllGreen
	// trade OnFlowChange 0→1
	// trade OnExitAllGreen
	// trade OnFlowChange 1→50
	// trade OnFlowChange 50→100
	// trade OnEnterAllBlue
	// trade OnFlowChange 100→50
	// trade OnExitAllBlue
	// trade OnFinish
}

// The weights instances write for a 1 % canary on blue: blue 100/99 against green's 100, so
// that blue's share is 1 %.
func ExampleWeights() {
	blue, green := traffic.Weights(1)
	fmt.Printf("blue %.4f green %.0f share %.2f%%\n", blue, green, 100*blue/(blue+green))
	// Output: blue 1.0101 green 100 share 1.00%
}
