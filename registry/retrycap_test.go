package registry_test

import (
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/registry"
)

// The keeper's retries come well inside the lease: even with +20 % jitter a wait is at most
// 40 % of the TTL, so at least two attempts fit in a lease a new leader just kept (issue 19).
func TestRetriesStayWellInsideTheLease(t *testing.T) {
	for _, ttl := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, time.Minute} {
		c := registry.RetryCap(ttl)
		if worst := c * 12 / 10; worst*2 >= ttl || c <= 0 {
			t.Errorf("TTL %v: retries wait up to %v (+20 %% jitter: %v); want two attempts inside the lease", ttl, c, worst)
		}
		if c > 5*time.Second {
			t.Errorf("TTL %v: retries wait up to %v; want at most 5 s", ttl, c)
		}
	}
}
