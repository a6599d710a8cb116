package balancer_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/registry"
)

// killOneOfFour runs 16 callers against 4 instances (5 ms handlers), kills one instance
// abruptly (no deregistration, connections cut mid-call) and returns the failed calls.
func killOneOfFour(t *testing.T, methodConfig string) (failed, total int64) {
	c := newCluster(t)
	var insts []*instance
	for i := 0; i < 4; i++ {
		in := c.start(registry.Instance{ID: fmt.Sprintf("g-%d", i)})
		in.delay.Store(int64(5 * time.Millisecond))
		insts = append(insts, in)
	}
	client := c.dial(func(rc *registry.ResolverConfig) { rc.MethodConfig = methodConfig })
	calls(t, client, context.Background(), 40, 4) // all connected

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var nFailed, nTotal atomic.Int64
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.SayHello(ctx, &greeterpb.HelloRequest{})
				cancel()
				nTotal.Add(1)
				if err != nil {
					nFailed.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	insts[1].srv.Stop() // dies abruptly: in-flight calls are cut
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	return nFailed.Load(), nTotal.Load()
}

func TestRetryPolicyHidesAnAbruptDeath(t *testing.T) {
	failed, total := killOneOfFour(t, "")
	t.Logf("without a retry policy: %d of %d calls failed when one of 4 instances died", failed, total)
	if failed == 0 {
		t.Fatal("the kill cut no call in flight, so this test shows nothing; make the handlers slower")
	}
	failed, total = killOneOfFour(t, registry.RetryPolicy("switchyard.greeter.v1.Greeter"))
	t.Logf("with RetryPolicy: %d of %d calls failed", failed, total)
	if failed != 0 {
		t.Fatalf("%d calls failed with a retry policy for the idempotent service", failed)
	}
}
