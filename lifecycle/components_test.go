package lifecycle_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/job"
	"github.com/switchyard-go/switchyard/lifecycle"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/traffic"
)

// journal is shared by components to record the order of what happens to them.
type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	j.lines = append(j.lines, s)
	j.mu.Unlock()
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.lines, " ")
}

type component struct {
	name     string
	j        *journal
	failWith error
}

func (c *component) Start(context.Context) error {
	if c.failWith != nil {
		return c.failWith
	}
	c.j.add("start:" + c.name)
	return nil
}

func (c *component) Stop(context.Context) error { c.j.add("stop:" + c.name); return nil }

// consumer also takes rule events, as an MQ consumer does.
type consumer struct{ component }

func (c *consumer) HandleEvent(e traffic.Event) { c.j.add(c.name + ":" + e.Kind.String()) }

// startWith builds an instance, appends comps and starts it (stopped at cleanup).
func startWith(t *testing.T, cli *clientv3.Client, id string, comps []lifecycle.Component, mod ...func(*lifecycle.Config)) *lifecycle.Instance {
	t.Helper()
	inst, err := lifecycle.New(config(t, cli, id, mod...))
	if err != nil {
		t.Fatal(err)
	}
	inst.Append(comps...)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return inst
}

func TestComponentsStartInOrderStopInReverseAndGetEvents(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	j := &journal{}
	a := &component{name: "a", j: j}
	mq := &consumer{component{name: "mq", j: j}}
	b := &component{name: "b", j: j}
	inst, err := lifecycle.New(config(t, cli, "blue-1", func(c *lifecycle.Config) { c.Color = "blue" }))
	if err != nil {
		t.Fatal(err)
	}
	inst.Append(a, mq) // appended in two calls: they start in the order of the calls
	inst.Append(b)
	t.Cleanup(func() { _ = inst.Offline(context.Background()) })
	if err := inst.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := j.String(); got != "start:a start:mq start:b" {
		t.Fatalf("after Start: %q", got)
	}
	ctl, _ := traffic.NewController(traffic.Config{Client: cli, Logger: testutil.Logger(t)})
	if _, err := ctl.Open(context.Background(), "trade", []string{"greeter"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Shift(context.Background(), "trade", 0); err != nil { // drain blue
		t.Fatal(err)
	}
	testutil.Eventually(t, "the drain's events reaching the consumer", func() bool { return strings.HasSuffix(j.String(), "mq:OnEnterAllGreen") })
	if err := inst.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "start:a start:mq start:b mq:OnStart mq:OnFlowChange mq:OnEnterAllGreen stop:b stop:mq stop:a"
	if got := j.String(); got != want {
		t.Fatalf("journal\n got %q\nwant %q", got, want)
	}
	if st := inst.Status(); st.TrafficWeight != 0 || st.Channel != "trade" {
		t.Fatalf("blue instance in a blue-drained channel: %+v", st)
	}
}

func TestStartFailureUndoesWhatStarted(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	j := &journal{}
	boom := errors.New("broker unreachable")
	inst, err := lifecycle.New(config(t, cli, "a"))
	if err != nil {
		t.Fatal(err)
	}
	inst.Append(&component{name: "a", j: j}, &component{name: "b", j: j, failWith: boom})
	err = inst.Start(context.Background())
	if !errors.Is(err, boom) {
		t.Fatalf("Start = %v, want it to wrap the component's error", err)
	}
	if got := j.String(); got != "start:a stop:a" {
		t.Fatalf("journal %q: the started component must be stopped again", got)
	}
	if resp, _ := cli.Get(context.Background(), "/switchyard/services/greeter/a"); len(resp.Kvs) != 0 {
		t.Fatal("still registered after a failed start")
	}
	if inst.State() != lifecycle.StateStopped {
		t.Fatalf("state %s after a failed start", inst.State())
	}
	if err := inst.Offline(context.Background()); err != nil {
		t.Fatalf("Offline after a failed start: %v", err)
	}
}

// flaky fails its second Start.
type flaky struct {
	component
	starts int
}

func (f *flaky) Start(ctx context.Context) error {
	f.starts++
	if f.starts == 2 {
		return errors.New("second start fails")
	}
	return f.component.Start(ctx)
}

func TestOnlineFailureStaysDrained(t *testing.T) {
	t.Parallel()
	cli := etcdtest.Start(t).Client(t)
	j := &journal{}
	f := &flaky{component: component{name: "f", j: j}}
	inst := startWith(t, cli, "a", []lifecycle.Component{f})
	if err := inst.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := inst.Online(context.Background()); err == nil {
		t.Fatal("Online succeeded although a component failed to start")
	}
	st := inst.Status()
	if st.State != lifecycle.StateDrained || !st.Offline || st.Ready || st.Registered != "unregistered" {
		t.Fatalf("after a failed Online: %+v; want drained, flagged, not ready, unregistered", st)
	}
	select {
	case <-inst.GoingOffline():
	default:
		t.Fatal("GoingOffline open after a failed Online")
	}
	if err := inst.Online(context.Background()); err != nil { // third Start succeeds
		t.Fatal(err)
	}
	if st := inst.Status(); st.State != lifecycle.StateServing || st.Offline || st.Registered != "registered" {
		t.Fatalf("after Online: %+v", st)
	}
}

// mq.Consumer and job.Executor are lifecycle components; they follow the Instance as their
// deploy.Drains.
var (
	_ lifecycle.Component = (*mq.Consumer)(nil)
	_ lifecycle.Component = (*job.Executor)(nil)
	_ deploy.Drains       = (*lifecycle.Instance)(nil)
)
