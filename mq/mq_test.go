package mq_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
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

func consumer(t *testing.T, b mq.Broker, color registry.Color, g *got) *mq.Consumer {
	t.Helper()
	c, err := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Color: color, Handler: g.handler, Logger: silent})
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
		tag registry.Color
	}{{"b", registry.ColorBlue}, {"g", registry.ColorGreen}, {"u", registry.ColorNone}} {
		if err := mq.NewProducer(b, m.tag).Publish(context.Background(), "t", mq.Message{Value: []byte(m.id)}); err != nil {
			t.Fatal(err)
		}
	}
	odd := mq.Message{Value: []byte("r"), Headers: map[string]string{mq.ColorHeader: "red"}}
	if err := b.Publish(context.Background(), "t", odd); err != nil {
		t.Fatal(err)
	}
}

func TestGroupsAndFilters(t *testing.T) {
	b := newMemBroker()
	var blue, green got
	cb := consumer(t, b, registry.ColorBlue, &blue)
	cg := consumer(t, b, registry.ColorGreen, &green)
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
	c := consumer(t, b, registry.ColorNone, &g)
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
		tags = append(tags, m.Headers[mq.ColorHeader])
		return nil
	})
	defer sub.Stop(context.Background())
	in := mq.Message{Headers: map[string]string{mq.ColorHeader: "blue", "k": "v"}}
	_ = mq.NewProducer(b, registry.ColorGreen).Publish(context.Background(), "t", in)
	_ = mq.NewProducer(b, registry.ColorNone).Publish(context.Background(), "t", in)
	if !slices.Equal(tags, []string{"green", ""}) || in.Headers[mq.ColorHeader] != "blue" {
		t.Fatalf("tags %q; the caller's map became %v", tags, in.Headers)
	}
}

func TestGreenDrainedWithRealRules(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	rules, err := traffic.NewClient(ctx, traffic.Config{Client: cli, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	defer rules.Close()
	ctl, _ := traffic.NewController(traffic.Config{Client: cli})
	if _, err := ctl.Open(ctx, "trade", []string{"orders"}); err != nil {
		t.Fatal(err)
	}
	b := newMemBroker()
	var blue, green got
	mk := func(color registry.Color, g *got) *mq.Consumer {
		c, _ := mq.NewConsumer(mq.ConsumerConfig{Broker: b, Topic: "t", Group: "G", Handler: g.handler, Logger: silent})
		c.UseRules(rules, "orders", color)
		t.Cleanup(rules.Subscribe("trade", c.HandleEvent))
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Stop(ctx) })
		return c
	}
	cb, cg := mk(registry.ColorBlue, &blue), mk(registry.ColorGreen, &green)
	if _, err := ctl.Shift(ctx, "trade", 100); err != nil { // drain green
		t.Fatal(err)
	}
	testutil.Eventually(t, "green drained: blue in G, G-blue and G-green, green in none", func() bool {
		return slices.Equal(cb.Groups(), []string{"G", "G-blue", "G-green"}) && len(cg.Groups()) == 0
	})
	publishAll(t, b)
	if s := blue.sorted(); s != "b g r u" || green.sorted() != "" {
		t.Fatalf("green drained: blue handled %q, green %q", s, green.sorted())
	}
}
