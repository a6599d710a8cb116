package lifecycle_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/lifecycle"
)

// answer is an admin HTTP answer: its code and body.
type answer struct {
	code int
	body string
}

// post sends POST path to the instance's admin server and returns the answer.
func post(t testing.TB, inst *lifecycle.Instance, path string) answer {
	t.Helper()
	resp, err := http.Post("http://"+inst.AdminAddr()+path, "", nil)
	if err != nil {
		t.Error(err)
		return answer{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b)}
}

// statusOf decodes a status JSON answer, failing t if it is not one.
func statusOf(t testing.TB, a answer) lifecycle.Status {
	t.Helper()
	var s lifecycle.Status
	if a.code != http.StatusOK {
		t.Fatalf("answer %d %q; want 200 with the status", a.code, a.body)
	}
	if err := json.Unmarshal([]byte(a.body), &s); err != nil {
		t.Fatalf("answer %q is no status: %v", a.body, err)
	}
	return s
}

// getStatus reads GET /status.
func getStatus(t *testing.T, inst *lifecycle.Instance) lifecycle.Status {
	t.Helper()
	resp, err := http.Get("http://" + inst.AdminAddr() + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return statusOf(t, answer{resp.StatusCode, string(b)})
}

// recordExists reads the instance's key with a client that does not go through the proxy
// that was cut.
func recordExists(t *testing.T, direct *clientv3.Client, id string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
	defer cancel()
	resp, err := direct.Get(ctx, deploy.InstanceKey(deploy.DefaultPrefix, "greeter", id))
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Kvs) == 1
}

// Issue 19 item 1: with etcd cut off, a drain's local steps (readiness 503, gRPC health,
// GoingOffline, components) happen at once rather than after RequestTimeout; POST /offline
// answers 200 with the status saying the deregistration is pending and why, and the
// registrar deletes the record by itself once etcd answers again.
func TestDrainDoesNotWaitForEtcd(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli, direct := e.Client(t), e.DirectClient(t)
	const requestTimeout = 1500 * time.Millisecond
	inst, _ := start(t, cli, "a", func(c *lifecycle.Config) {
		c.RequestTimeout = requestTimeout
		c.QuietPeriod = 50 * time.Millisecond
		c.TTL = 10 * time.Second // the lease outlives the cut: only the delete can remove the key
	})
	if !recordExists(t, direct, "a") {
		t.Fatal("a is not registered after Start")
	}
	goingOff := inst.GoingOffline()

	e.Cut()
	began := time.Now()
	answered := make(chan answer, 1)
	go func() { answered <- post(t, inst, "/offline") }()
	awaitClosed(t, "GoingOffline to close", goingOff)
	closedAfter := time.Since(began)
	if code := httpGet(t, inst, "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("readiness %d once GoingOffline closed; want 503", code)
	}
	notReadyAfter := time.Since(began)
	a := testutil.Receive(t, "POST /offline to answer", answered)
	answeredAfter := time.Since(began)
	t.Logf("etcd cut: GoingOffline closed after %v, readiness 503 after %v, /offline answered %d after %v: %s",
		closedAfter.Round(time.Millisecond), notReadyAfter.Round(time.Millisecond), a.code,
		answeredAfter.Round(time.Millisecond), strings.TrimSpace(a.body))
	// The local steps take microseconds; a third of RequestTimeout is margin for a loaded
	// machine, and still far from the whole RequestTimeout the old drain waited first.
	if notReadyAfter > requestTimeout/3 {
		t.Fatalf("with etcd cut, readiness went 503 %v after POST /offline; want the local steps at once, not after the deregistration's RequestTimeout (%v)",
			notReadyAfter.Round(time.Millisecond), requestTimeout)
	}
	s := statusOf(t, a)
	if s.State != lifecycle.StateDrained || s.Deregistration != "pending" || !strings.Contains(s.RegistryError, "etcd unavailable") {
		t.Fatalf("/offline with etcd cut answered state %q, deregistration %q, registry error %q; want drained, pending, etcd unavailable",
			s.State, s.Deregistration, s.RegistryError)
	}
	if !recordExists(t, direct, "a") {
		t.Fatal("the record is gone while etcd was cut; the test cannot tell a pending deregistration")
	}
	err := inst.Drain(context.Background())
	if !errors.Is(err, lifecycle.ErrDeregistrationPending) {
		t.Fatalf("Drain on the drained instance while etcd is cut = %v; want ErrDeregistrationPending", err)
	}

	e.Heal()
	healed := time.Now()
	testutil.Eventually(t, "the registrar to delete the record in the background", func() bool {
		return !recordExists(t, direct, "a")
	})
	t.Logf("record deleted %v after etcd was healed", time.Since(healed).Round(time.Millisecond))
	testutil.Eventually(t, "GET /status to say the deregistration is done", func() bool {
		return getStatus(t, inst).Deregistration == "done"
	})
	if s := getStatus(t, inst); s.RegistryError != "" || s.Registered != "unregistered" {
		t.Fatalf("status after the background delete: registered %q, registry error %q; want unregistered, none", s.Registered, s.RegistryError)
	}
	if err := inst.Drain(context.Background()); err != nil {
		t.Fatalf("Drain once the record is deleted = %v; want nil", err)
	}
}

// With etcd up, /offline answers 200 with the deregistration done, and Drain returns nil.
func TestOfflineAnswersDeregistrationDone(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	inst, _ := start(t, cli, "a")
	if s := getStatus(t, inst); s.Deregistration != "" || s.RegistryError != "" {
		t.Fatalf("serving instance's status: deregistration %q, registry error %q; want both empty", s.Deregistration, s.RegistryError)
	}
	s := statusOf(t, post(t, inst, "/offline"))
	if s.State != lifecycle.StateDrained || s.Deregistration != "done" || s.Registered != "unregistered" || s.RegistryError != "" {
		t.Fatalf("/offline answered state %q, deregistration %q, registered %q, registry error %q; want drained, done, unregistered, none",
			s.State, s.Deregistration, s.Registered, s.RegistryError)
	}
	if recordExists(t, e.DirectClient(t), "a") {
		t.Fatal("record still in etcd after /offline said done")
	}
	if err := inst.Drain(context.Background()); err != nil {
		t.Fatalf("Drain after /offline = %v; want nil", err)
	}
}
