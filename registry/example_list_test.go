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

// List reads an app's instances once; a key it cannot read is reported, not dropped.
func ExampleList() {
	cli, stop := etcdtest.ForExample() // an embedded etcd; use your cluster's client instead
	defer stop()
	ctx := context.Background()
	for _, id := range []string{"order-2", "order-1"} {
		reg, err := registry.NewRegistrar(registry.Config{
			Client:   cli,
			Instance: registry.Record{App: "order", ID: id, Addr: "10.0.3.7:9000", Color: deploy.Blue},
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			panic(err)
		}
		defer reg.Close(ctx)
		if err := reg.Register(ctx); err != nil {
			panic(err)
		}
	}
	if _, err := cli.Put(ctx, "/switchyard/services/order/order-3", "not a record"); err != nil {
		panic(err)
	}

	recs, skipped, err := registry.List(ctx, cli, "", "order") // "": deploy.DefaultPrefix
	if err != nil {
		panic(err) // errors.Is(err, registry.ErrEtcdUnavailable) when etcd does not answer
	}
	for _, in := range recs {
		fmt.Println(in.ID, in.Addr, in.Color, in.Weight)
	}
	for _, s := range skipped {
		fmt.Println("skipped", s.Key)
	}
	// Output:
	// order-1 10.0.3.7:9000 blue 100
	// order-2 10.0.3.7:9000 blue 100
	// skipped /switchyard/services/order/order-3
}
