package job_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/job"
)

// One executor of a job with 4 shard items runs every item at every trigger.
func Example() {
	cli, stop := etcdtest.ForExample() // an embedded etcd; use your cluster's client instead
	defer stop()

	var mu sync.Mutex
	ran := map[int]int{}
	ex, err := job.NewExecutor(job.Config{
		Client: cli, ID: "reports-1", Logger: testutil.Silent,
		// Drains: inst — in a service, the lifecycle.Instance, so that the executor runs
		// nothing while its color is drained; without Drains it is colorless.
		Job: job.Job{Name: "daily-settlement", Every: 100 * time.Millisecond, Items: 4,
			Handler: func(_ context.Context, item int) error {
				mu.Lock()
				ran[item]++
				mu.Unlock()
				return nil
			}},
	})
	if err != nil {
		panic(err)
	}
	if err := ex.Start(context.Background()); err != nil {
		panic(err)
	}
	// Wait until every item has run (a trigger passes every 100 ms).
	if err := testutil.Poll(context.Background(), testutil.Deadline, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ran) == 4
	}); err != nil {
		panic(err)
	}
	_ = ex.Stop(context.Background())

	mu.Lock()
	defer mu.Unlock()
	var items []int
	for it, n := range ran {
		if n > 0 {
			items = append(items, it)
		}
	}
	slices.Sort(items)
	fmt.Println("items run:", items)
	// Output: items run: [0 1 2 3]
}

// An executor of a drained color runs nothing; once its color is undrained, the leader
// assigns it the items again and it runs them. In a service, Drains is the
// lifecycle.Instance, which follows the app's traffic rule; here ManualDrains sets them.
func Example_drains() {
	cli, stop := etcdtest.ForExample()
	defer stop()

	drains := deploy.NewManualDrains(deploy.Blue)
	drains.Set(deploy.Drain{Blue: true}) // blue is drained from the start
	var mu sync.Mutex
	ran := map[int]bool{}
	ex, err := job.NewExecutor(job.Config{
		Client: cli, ID: "blue-1", Drains: drains, Logger: testutil.Silent,
		Job: job.Job{Name: "daily-settlement", Every: 100 * time.Millisecond, Items: 4,
			Handler: func(_ context.Context, item int) error {
				mu.Lock()
				ran[item] = true
				mu.Unlock()
				return nil
			}},
	})
	if err != nil {
		panic(err)
	}
	if err := ex.Start(context.Background()); err != nil {
		panic(err)
	}
	defer func() { _ = ex.Stop(context.Background()) }()

	// blue-1 campaigns (its election key is under leader/) and leads, but while blue is
	// drained the leader assigns it nothing, and it would start nothing anyway.
	if err := testutil.Poll(context.Background(), testutil.Deadline, func() bool {
		resp, err := cli.Get(context.Background(), "/switchyard/jobs/daily-settlement/leader/", clientv3.WithPrefix())
		return err == nil && len(resp.Kvs) > 0
	}); err != nil {
		panic(err)
	}
	fmt.Println("runs while drained:", ex.Runs())

	drains.Set(deploy.Drain{}) // undrained: the leader wakes and assigns blue-1 every item
	if err := testutil.Poll(context.Background(), testutil.Deadline, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ran) == 4
	}); err != nil {
		panic(err)
	}
	fmt.Println("every item ran after the undrain")
	// Output:
	// runs while drained: 0
	// every item ran after the undrain
}
