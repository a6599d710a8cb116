package job_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

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
