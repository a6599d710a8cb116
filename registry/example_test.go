package registry_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/registry"
)

// A provider registers itself; a consumer's Watcher sees it come and go.
func Example() {
	cli, stop := etcdtest.ForExample() // an embedded etcd; use your cluster's client instead
	defer stop()
	silent := slog.New(slog.NewTextHandler(io.Discard, nil))

	updates := make(chan registry.Snapshot, 8)
	w, err := registry.NewWatcher(registry.WatcherConfig{
		Client: cli, App: "order", Logger: silent,
		OnUpdate: func(u registry.Snapshot) { updates <- u },
	})
	if err != nil {
		panic(err)
	}
	defer w.Close()
	fmt.Println("instances:", len((<-updates).Instances))

	reg, err := registry.NewRegistrar(registry.Config{
		Client:   cli,
		Instance: registry.Record{App: "order", ID: "order-1", Addr: "10.0.3.7:9000", Color: deploy.Blue},
		Logger:   silent,
	})
	if err != nil {
		panic(err)
	}
	defer reg.Close(context.Background())
	if err := reg.Register(context.Background()); err != nil {
		panic(err)
	}
	in := (<-updates).Instances[0]
	fmt.Println("registered:", in.ID, in.Addr, in.Color, "weight", in.Weight)

	if err := reg.Deregister(context.Background()); err != nil {
		panic(err)
	}
	fmt.Println("instances:", len((<-updates).Instances))
	// Output:
	// instances: 0
	// registered: order-1 10.0.3.7:9000 blue weight 100
	// instances: 0
}
