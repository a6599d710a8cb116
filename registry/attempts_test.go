package registry_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// slowEtcd stands for an etcd request that etcd answers only when the attempt gives it need:
// an attempt with less time waits out its deadline, unanswered. It notes each attempt's time.
type slowEtcd struct {
	need time.Duration
	mu   sync.Mutex
	got  []time.Duration // each attempt's time
}

func (s *slowEtcd) do(ctx context.Context) error {
	dl, _ := ctx.Deadline()
	d := time.Until(dl)
	s.mu.Lock()
	s.got = append(s.got, d)
	s.mu.Unlock()
	if d < s.need {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (s *slowEtcd) attempts() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := slices.Clone(s.got)
	s.got = nil
	return g
}

// A slow but working etcd still gets attempts as long as it needs: each attempt it leaves
// unanswered is followed by one twice as long, up to RequestTimeout, within RequestTimeout in
// all; the next request (the keeper's next re-sync) starts where the last one stopped, and an
// answer sets the attempts back to 500 ms.
func TestAttemptsGrowForASlowEtcdAndShrinkAfterAnAnswer(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	const requestTimeout = 2 * time.Second
	r, err := registry.NewRegistrar(registry.Config{Client: cli, RequestTimeout: requestTimeout, Logger: testutil.Logger(t),
		Instance: registry.Record{App: "order", ID: "o1", Addr: "10.0.0.1:8080"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	ms := func(d ...time.Duration) []time.Duration {
		for k := range d {
			d[k] *= time.Millisecond
		}
		return d
	}
	// near: each attempt had the time wanted, less what a loaded machine took to start it.
	near := func(got, want []time.Duration) bool {
		return slices.EqualFunc(got, want, func(g, w time.Duration) bool { return g <= w && g > w-200*time.Millisecond })
	}
	etcd := &slowEtcd{need: 1500 * time.Millisecond}
	// 500 ms and 1 s go unanswered; the 2 s that would come next is cut to what is left of
	// RequestTimeout (500 ms): the request fails as etcd unavailable.
	err = r.Request(context.Background(), etcd.do)
	if got, want := etcd.attempts(), ms(500, 1000, 500); !errors.Is(err, registry.ErrEtcdUnavailable) || !near(got, want) {
		t.Fatalf("first request to an etcd that needs 1.5 s: attempts %v, %v; want %v, ErrEtcdUnavailable", got, err, want)
	}
	// The next request starts with 2 s, which is enough.
	err = r.Request(context.Background(), etcd.do)
	if got, want := etcd.attempts(), ms(2000); err != nil || !near(got, want) {
		t.Fatalf("second request: attempts %v, %v; want %v, nil", got, err, want)
	}
	// After an answer, the first attempt is short again.
	etcd.need = 0
	err = r.Request(context.Background(), etcd.do)
	if got, want := etcd.attempts(), ms(500); err != nil || !near(got, want) {
		t.Fatalf("request after an answer: attempts %v, %v; want %v, nil", got, err, want)
	}
	// etcd's refusals of the Unavailable class are tried again: a member answers "request
	// timed out, possibly due to previous leader failure" for a write it forwarded to a leader
	// that died (in the leader-kill test under load, it came before the client's own deadline).
	n := 0
	err = r.Request(context.Background(), func(context.Context) error {
		if n++; n == 1 {
			return rpctypes.ErrTimeoutDueToLeaderFail
		}
		return nil
	})
	if err != nil || n != 2 {
		t.Fatalf("request that etcd refused once with %q: %d attempts, %v; want 2, nil", rpctypes.ErrTimeoutDueToLeaderFail, n, err)
	}
	// An error that is etcd's answer is not tried again.
	answer := errors.New("etcdserver: some refusal")
	err = r.Request(context.Background(), func(ctx context.Context) error { _ = etcd.do(ctx); return answer })
	if got := etcd.attempts(); !errors.Is(err, answer) || len(got) != 1 {
		t.Fatalf("request that etcd refused: %d attempts, %v; want 1, the refusal", len(got), err)
	}
}
