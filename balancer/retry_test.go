package balancer_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// killOneOfFour runs 16 callers against 4 instances (5 ms handlers), kills one instance
// abruptly (no deregistration, connections cut mid-call) while calls are in flight on it,
// and returns the failed calls and all calls.
func killOneOfFour(t *testing.T, methodConfig string) (failed, total int64) {
	c := newCluster(t)
	var insts []*instance
	for i := 0; i < 4; i++ {
		in := c.start(registry.Record{ID: fmt.Sprintf("g-%d", i)})
		in.delay.Store(int64(5 * time.Millisecond))
		insts = append(insts, in)
	}
	client := c.dialWith(func(rc *registry.ResolverConfig) { rc.MethodConfig = methodConfig })
	victim := insts[1]

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var nFailed, nTotal atomic.Int64
	var killed atomic.Bool
	var afterKill atomic.Int32 // callers that finished a call they started after the kill
	const callers = 16
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counted := false
			for {
				select {
				case <-stop:
					return
				default:
				}
				after := killed.Load()
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				_, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
				cancel()
				nTotal.Add(1)
				if err != nil {
					nFailed.Add(1)
				}
				if after && !counted {
					counted = true
					afterKill.Add(1)
				}
			}
		}()
	}
	// The victim holds the calls that reach it from now on, so the kill surely cuts some.
	victim.hold.Store(true)
	testutil.Eventually(t, "calls in flight on the victim", func() bool { return victim.inflight.Load() >= 2 })
	killed.Store(true)
	victim.srv.Stop() // dies abruptly: in-flight calls are cut
	// Every caller has finished the call it had in flight at the kill and one more: the
	// client is past the death.
	testutil.Eventually(t, "every caller to finish a call started after the kill", func() bool { return afterKill.Load() == callers })
	close(stop)
	wg.Wait()
	return nFailed.Load(), nTotal.Load()
}

func TestRetryPolicyHidesAnAbruptDeath(t *testing.T) {
	failed, total := killOneOfFour(t, "")
	t.Logf("without a retry policy: %d of %d calls failed when one of 4 instances died", failed, total)
	if failed == 0 {
		t.Fatal("the kill cut no call in flight, so this test shows nothing")
	}
	failed, total = killOneOfFour(t, registry.RetryPolicy("switchyard.greeter.v1.Greeter"))
	t.Logf("with RetryPolicy: %d of %d calls failed", failed, total)
	if failed != 0 {
		t.Fatalf("%d calls failed with a retry policy for the idempotent service", failed)
	}
}
