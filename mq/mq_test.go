package mq_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var silent = testutil.Silent

type got struct {
	mu  sync.Mutex
	ids []string
}

func (g *got) handler(_ context.Context, m mq.Message) error {
	g.mu.Lock()
	g.ids = append(g.ids, string(m.Value))
	g.mu.Unlock()
	return nil
}

func (g *got) sorted() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := slices.Clone(g.ids)
	slices.Sort(s)
	return strings.Join(s, " ")
}

// consumer starts a consumer of group G on topic t following d (nil: colorless).
func consumer(t *testing.T, b mq.Broker, d deploy.Drains, g *got) *mq.Consumer {
	t.Helper()
	c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Drains: d, Handler: g.handler, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return c
}

// publishAll sends one message of each tag: blue, green, untagged, and an unknown color.
func publishAll(t *testing.T, b mq.Broker) {
	t.Helper()
	for _, m := range []struct {
		id  string
		tag deploy.Color
	}{{"b", deploy.Blue}, {"g", deploy.Green}, {"u", deploy.None}} {
		if err := mq.NewProducer(b, m.tag).Publish(context.Background(), "t", mq.Message{Value: []byte(m.id)}); err != nil {
			t.Fatal(err)
		}
	}
	odd := mq.Message{Value: []byte("r"), Headers: map[string]string{deploy.ColorHeader: "red"}}
	if err := b.Publish(context.Background(), "t", odd); err != nil {
		t.Fatal(err)
	}
}

func TestGroupsAndFilters(t *testing.T) {
	b := newMemBroker()
	var blue, green got
	cb := consumer(t, b, deploy.NewManualDrains(deploy.Blue), &blue)
	cg := consumer(t, b, deploy.NewManualDrains(deploy.Green), &green)
	if g := cb.Groups(); !slices.Equal(g, []string{"G", "G-blue"}) {
		t.Fatalf("blue groups %v", g)
	}
	if g := cg.Groups(); !slices.Equal(g, []string{"G", "G-green"}) {
		t.Fatalf("green groups %v", g)
	}
	publishAll(t, b)
	// Blue handles blue; green handles green; the origin group handles untagged and the
	// unknown "red" once, on whichever member got it.
	all := blue.sorted() + " " + green.sorted()
	if !strings.Contains(blue.sorted(), "b") || strings.Contains(blue.sorted(), "g") ||
		!strings.Contains(green.sorted(), "g") || strings.Contains(green.sorted(), "b") ||
		strings.Count(all, "u") != 1 || strings.Count(all, "r") != 1 {
		t.Fatalf("blue handled %q, green %q", blue.sorted(), green.sorted())
	}
}

func TestColorlessConsumerHandlesEverything(t *testing.T) {
	b := newMemBroker()
	var g got
	c := consumer(t, b, nil, &g)
	if gs := c.Groups(); !slices.Equal(gs, []string{"G"}) {
		t.Fatalf("groups %v", gs)
	}
	publishAll(t, b)
	if s := g.sorted(); s != "b g r u" {
		t.Fatalf("colorless consumer handled %q, want all four", s)
	}
}

func TestProducerTagsAndUntags(t *testing.T) {
	b := newMemBroker()
	var tags []string
	sub, _ := b.Subscribe(context.Background(), "t", "spy", func(_ context.Context, m mq.Message) error {
		tags = append(tags, m.Headers[deploy.ColorHeader])
		return nil
	})
	defer sub.Stop(context.Background())
	in := mq.Message{Headers: map[string]string{deploy.ColorHeader: "blue", "k": "v"}}
	_ = mq.NewProducer(b, deploy.Green).Publish(context.Background(), "t", in)
	_ = mq.NewProducer(b, deploy.None).Publish(context.Background(), "t", in)
	if !slices.Equal(tags, []string{"green", ""}) || in.Headers[deploy.ColorHeader] != "blue" {
		t.Fatalf("tags %q; the caller's map became %v", tags, in.Headers)
	}
}

// drains are the blue and the green instance's, set together as a rule change reaches both.
type drains struct{ blue, green *deploy.ManualDrains }

func newDrains() drains {
	return drains{deploy.NewManualDrains(deploy.Blue), deploy.NewManualDrains(deploy.Green)}
}

func (d drains) set(to deploy.Drain) { d.blue.Set(to); d.green.Set(to) }

func waitGroups(t *testing.T, who string, c *mq.Consumer, want ...string) {
	t.Helper()
	testutil.Eventually(t, who+" in groups "+strings.Join(want, ","), func() bool { return slices.Equal(c.Groups(), want) })
}

// The consumers follow their drains from their own goroutine: the drained color leaves every
// group, the other takes its group over, and both return when the drain ends.
func TestConsumersFollowDrains(t *testing.T) {
	b := newMemBroker()
	d := newDrains()
	var blue, green got
	cb, cg := consumer(t, b, d.blue, &blue), consumer(t, b, d.green, &green)

	d.set(deploy.Drain{Green: true})
	waitGroups(t, "blue", cb, "G", "G-blue", "G-green")
	waitGroups(t, "green", cg)
	publishAll(t, b)
	if s := blue.sorted(); s != "b g r u" || green.sorted() != "" {
		t.Fatalf("green drained: blue handled %q, green %q", s, green.sorted())
	}

	d.set(deploy.Drain{Blue: true}) // straight from all-blue to all-green
	waitGroups(t, "blue", cb)
	waitGroups(t, "green", cg, "G", "G-blue", "G-green")

	d.set(deploy.Drain{})
	waitGroups(t, "blue", cb, "G", "G-blue")
	waitGroups(t, "green", cg, "G", "G-green")
}

// A consumer that starts while its color is drained joins nothing, and joins when the drain
// ends.
func TestConsumerStartsDrained(t *testing.T) {
	b := newMemBroker()
	d := deploy.NewManualDrains(deploy.Blue)
	d.Set(deploy.Drain{Blue: true})
	var g got
	c := consumer(t, b, d, &g)
	if gs := c.Groups(); len(gs) != 0 {
		t.Fatalf("started while drained, in groups %v", gs)
	}
	d.Set(deploy.Drain{})
	waitGroups(t, "blue", c, "G", "G-blue")
}

// After Stop the consumer follows the drains no more (its goroutine is gone: goleak checks at
// the end), and a Start again (lifecycle's Online) follows them again.
func TestStopEndsFollowingAndStartResumes(t *testing.T) {
	b := newMemBroker()
	d := deploy.NewManualDrains(deploy.Green)
	var g got
	c := consumer(t, b, d, &g)
	ctx := context.Background()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	d.Set(deploy.Drain{Blue: true})
	if gs := c.Groups(); len(gs) != 0 {
		t.Fatalf("stopped, yet in groups %v after a change of the drains", gs)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if gs := c.Groups(); !slices.Equal(gs, []string{"G", "G-blue", "G-green"}) {
		t.Fatalf("started again with blue drained: groups %v", gs)
	}
	d.Set(deploy.Drain{Green: true})
	waitGroups(t, "green", c)
}

// slowBroker's memberships take until release (or their Stop's ctx) to stop, as one whose
// handler is still busy with a message does.
type slowBroker struct {
	*memBroker
	release  chan struct{}
	stopping chan string // the group of each Stop that began
	failJoin string      // Subscribe to this group fails
}

type slowSub struct {
	mq.Subscription
	b     *slowBroker
	group string
}

func (b *slowBroker) Subscribe(ctx context.Context, topic, group string, fn func(context.Context, mq.Message) error) (mq.Subscription, error) {
	if group == b.failJoin {
		return nil, errors.New("broker refuses " + group)
	}
	s, err := b.memBroker.Subscribe(ctx, topic, group, fn)
	return &slowSub{s, b, group}, err
}

func (s *slowSub) Stop(ctx context.Context) error {
	s.b.stopping <- s.group
	select {
	case <-s.b.release:
		return s.Subscription.Stop(ctx)
	case <-ctx.Done():
		_ = s.Subscription.Stop(context.Background())
		return ctx.Err()
	}
}

// A Stop that begins while the consumer leaves its groups for a drain waits for that, under
// its own ctx: it returns by its deadline, with the error of the groups it had to cut.
func TestStopBoundsADrainInProgress(t *testing.T) {
	b := &slowBroker{memBroker: newMemBroker(), release: make(chan struct{}), stopping: make(chan string, 4)}
	defer close(b.release)
	d := deploy.NewManualDrains(deploy.Blue)
	var g got
	c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Drains: d, Handler: g.handler, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.Set(deploy.Drain{Blue: true})
	testutil.Receive(t, "the drain leaving a group", b.stopping)
	testutil.Receive(t, "the drain leaving the other group", b.stopping)
	const timeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	err = c.Stop(ctx)
	if over := time.Since(deadline); over > 250*time.Millisecond {
		t.Errorf("Stop returned %v after its deadline", over)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "leave group G") {
		t.Fatalf("Stop = %v; want the groups it cut, wrapping %v", err, context.DeadlineExceeded)
	}
}

// A Start that cannot join every group leaves those it joined and follows nothing (goleak).
func TestStartFailureLeavesNothing(t *testing.T) {
	b := &slowBroker{memBroker: newMemBroker(), release: make(chan struct{}), stopping: make(chan string, 4), failJoin: "G-blue"}
	close(b.release)
	d := deploy.NewManualDrains(deploy.Blue)
	var g got
	c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Drains: d, Handler: g.handler, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "join group G-blue") {
		t.Fatalf("Start = %v; want the group it could not join", err)
	}
	if gs := c.Groups(); len(gs) != 0 {
		t.Fatalf("after a failed Start, in groups %v", gs)
	}
}

func TestConsumerConfigChecked(t *testing.T) {
	_, err := mq.NewConsumer(mq.ConsumerConfig{Broker: newMemBroker(), Topic: "t", Group: "G", Drains: deploy.NewManualDrains("red"),
		Handler: func(context.Context, mq.Message) error { return nil }})
	if err == nil || !strings.Contains(err.Error(), `color "red"`) {
		t.Fatalf("NewConsumer with a red instance: %v", err)
	}
}
