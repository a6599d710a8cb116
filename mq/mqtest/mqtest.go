// Package mqtest is the conformance test every mq adapter runs against its real broker:
// blue/green isolation across a drain, and no loss across a broker outage.
package mqtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// NewBroker returns a broker client for one instance (its own connection), closed at cleanup.
type NewBroker func(t testing.TB) mq.Broker

var silent = slog.New(slog.NewTextHandler(io.Discard, nil))

// processed records who handled which message when.
type processed struct {
	mu   sync.Mutex
	seen map[string][]handling
	n    int
}

type handling struct {
	instance string
	color    registry.Color
	at       time.Time
}

func (p *processed) add(id, instance string, color registry.Color) {
	p.mu.Lock()
	p.seen[id] = append(p.seen[id], handling{instance, color, time.Now()})
	p.n++
	p.mu.Unlock()
}

func (p *processed) distinct() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}

type instance struct {
	name     string
	color    registry.Color
	consumer *mq.Consumer
}

// rig is an app "orders" in channel "trade" with blue and green consumer instances.
type rig struct {
	t      *testing.T
	rules  *traffic.Client
	ctl    *traffic.Controller
	insts  []*instance
	proc   *processed
	topic  string
	newBrk NewBroker
}

func newRig(t *testing.T, newBroker NewBroker, topic string, perColor int) *rig {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	rules, err := traffic.NewClient(ctx, traffic.Config{Client: cli, Logger: silent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rules.Close)
	ctl, err := traffic.NewController(traffic.Config{Client: cli})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(ctx, "trade", []string{"orders"}); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, rules: rules, ctl: ctl, proc: &processed{seen: map[string][]handling{}}, topic: topic, newBrk: newBroker}
	for _, color := range []registry.Color{registry.ColorBlue, registry.ColorGreen} {
		for k := 1; k <= perColor; k++ {
			in := &instance{name: fmt.Sprintf("%s-%d", color, k), color: color}
			c, err := mq.NewConsumer(mq.ConsumerConfig{
				Broker: newBroker(t), Topic: topic, Group: "billing", Logger: silent,
				Handler: func(_ context.Context, m mq.Message) error {
					r.proc.add(string(m.Value), in.name, in.color)
					return nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			c.UseRules(rules, "orders", color) // what lifecycle does
			t.Cleanup(rules.Subscribe("trade", c.HandleEvent))
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Stop(context.Background()) })
			in.consumer = c
			r.insts = append(r.insts, in)
		}
	}
	return r
}

// waitGroups waits until every instance of color is in exactly the groups want.
func (r *rig) waitGroups(color registry.Color, want ...string) {
	r.t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(20 * time.Second)
	for _, in := range r.insts {
		if in.color != color {
			continue
		}
		for !slices.Equal(in.consumer.Groups(), want) {
			if time.Now().After(deadline) {
				r.t.Fatalf("%s is in groups %v, want %v", in.name, in.consumer.Groups(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (r *rig) waitProcessed(n int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for r.proc.distinct() < n {
		if time.Now().After(deadline) {
			r.t.Fatalf("only %d of %d messages processed after %v", r.proc.distinct(), n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publish sends messages from..to-1, cycling blue, green and untagged producers.
func (r *rig) publish(producers []*mq.Producer, from, to int) {
	r.t.Helper()
	for k := from; k < to; k++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := producers[k%3].Publish(ctx, r.topic, mq.Message{Value: []byte(fmt.Sprintf("m-%05d-%d", k, k%3))})
		cancel()
		if err != nil {
			r.t.Fatalf("publish %d: %v", k, err)
		}
	}
}

// TestIsolationAcrossADrain: 2 blue and 2 green instances, 10,000 messages from blue, green
// and untagged producers; blue is drained in the middle and then undrained. Every message is
// processed, by an instance of the group of its color, and none by a blue instance between
// the end of its drain and the undrain.
func TestIsolationAcrossADrain(t *testing.T, newBroker NewBroker) {
	r := newRig(t, newBroker, "orders.created", 2)
	r.waitGroups(registry.ColorBlue, "billing", "billing-blue")
	r.waitGroups(registry.ColorGreen, "billing", "billing-green")
	b := newBroker(t)
	producers := []*mq.Producer{mq.NewProducer(b, registry.ColorBlue), mq.NewProducer(b, registry.ColorGreen), mq.NewProducer(b, registry.ColorNone)}
	const total = 10_000
	ctx := context.Background()

	r.publish(producers, 0, 4000)
	if _, err := r.ctl.Shift(ctx, "trade", 0); err != nil { // drain blue
		t.Fatal(err)
	}
	r.waitGroups(registry.ColorBlue)
	drained := time.Now()
	r.waitGroups(registry.ColorGreen, "billing", "billing-blue", "billing-green")
	r.publish(producers, 4000, 7000)
	r.waitProcessed(7000, 60*time.Second) // everything sent while drained is handled by green
	undrain := time.Now()
	if _, err := r.ctl.Shift(ctx, "trade", 50); err != nil {
		t.Fatal(err)
	}
	r.waitGroups(registry.ColorBlue, "billing", "billing-blue")
	r.waitGroups(registry.ColorGreen, "billing", "billing-green")
	r.publish(producers, 7000, total)
	r.waitProcessed(total, 60*time.Second)
	time.Sleep(200 * time.Millisecond) // let late duplicates show

	r.proc.mu.Lock()
	defer r.proc.mu.Unlock()
	dups, byBlueWhileDrained, wrongGroup := 0, 0, 0
	for id, hs := range r.proc.seen {
		dups += len(hs) - 1
		tag := id[len(id)-1] // '0' blue, '1' green, '2' untagged
		for _, h := range hs {
			if h.color == registry.ColorBlue && h.at.After(drained) && h.at.Before(undrain) {
				byBlueWhileDrained++
			}
			// green-tagged messages belong to billing-green, which only green instances run
			// here; blue ones to billing-blue (blue instances, or green ones while blue is
			// drained); untagged ones to billing, which both run.
			if tag == '1' && h.color != registry.ColorGreen {
				wrongGroup++
			}
		}
	}
	var redeliveries uint64
	for _, in := range r.insts {
		redeliveries += in.consumer.Redeliveries()
	}
	t.Logf("%d messages, %d handlings: %d duplicates, %d redeliveries counted by the consumers", len(r.proc.seen), r.proc.n, dups, redeliveries)
	if len(r.proc.seen) != total {
		t.Fatalf("%d of %d messages processed", len(r.proc.seen), total)
	}
	if byBlueWhileDrained != 0 {
		t.Fatalf("%d messages were processed by a blue instance after its drain completed", byBlueWhileDrained)
	}
	if wrongGroup != 0 {
		t.Fatalf("%d green messages were processed outside billing-green", wrongGroup)
	}
	var blueOnGreen int
	for id, hs := range r.proc.seen {
		if strings.HasSuffix(id, "-0") && hs[0].color == registry.ColorGreen {
			blueOnGreen++
		}
	}
	if blueOnGreen == 0 {
		t.Fatal("no blue message was processed by green while blue was drained: the takeover did not happen")
	}
}

// TestBrokerOutage: the broker goes away for a while and comes back; consumers resume and no
// message is lost. stop and start control the broker.
func TestBrokerOutage(t *testing.T, newBroker NewBroker, stop, start func()) {
	r := newRig(t, newBroker, "orders.paid", 1)
	r.waitGroups(registry.ColorBlue, "billing", "billing-blue")
	r.waitGroups(registry.ColorGreen, "billing", "billing-green")
	b := newBroker(t)
	producers := []*mq.Producer{mq.NewProducer(b, registry.ColorBlue), mq.NewProducer(b, registry.ColorGreen), mq.NewProducer(b, registry.ColorNone)}
	r.publish(producers, 0, 1000)
	r.waitProcessed(1000, 30*time.Second)
	stop()
	time.Sleep(time.Second)
	start()
	r.publish(producers, 1000, 2000)
	r.waitProcessed(2000, 60*time.Second)
	t.Logf("after the outage: %d messages, %d handlings", r.proc.distinct(), r.proc.n)
}
