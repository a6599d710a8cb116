// Package mqtest is the conformance test every mq adapter runs against its real broker:
// blue/green isolation across a drain, and no loss across a broker outage.
//
// The tests wait for events, never for a fixed time: a consumer's groups, a count of
// messages handled, and at the end a barrier after which no handling can still come (see
// TestIsolationAcrossADrain).
package mqtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// NewBroker returns a broker client for one instance (its own connection), closed at cleanup.
type NewBroker func(t testing.TB) mq.Broker

// processed records who handled which message when. Markers (settle) are counted apart.
// While hold is not nil, blue instances' handlers wait for it to close (held counts them),
// so that a drain of blue begins with messages in flight on blue.
type processed struct {
	mu      sync.Mutex
	seen    map[string][]handling
	n       int
	markers int
	marked  map[string]bool
	hold    chan struct{}
	held    int
}

// wait blocks a handler while hold is set.
func (p *processed) wait() {
	p.mu.Lock()
	hold := p.hold
	if hold != nil {
		p.held++
	}
	p.mu.Unlock()
	if hold != nil {
		<-hold
	}
}

// holding reports how many handler calls wait for the hold now or did.
func (p *processed) holding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// holdBlue makes blue handlers wait until release.
func (p *processed) holdBlue() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = make(chan struct{})
}

// release lets the held handlers go on, if any.
func (p *processed) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

type handling struct {
	instance string
	color    registry.Color
	at       time.Time
}

func (p *processed) add(id, instance string, color registry.Color) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if strings.HasPrefix(id, "marker-") {
		if !p.marked[id] {
			p.marked[id] = true
			p.markers++
		}
		return
	}
	p.seen[id] = append(p.seen[id], handling{instance, color, time.Now()})
	p.n++
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
	rules, err := traffic.NewClient(ctx, traffic.Config{Client: cli, Logger: testutil.Logger(t)})
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
	r := &rig{t: t, rules: rules, ctl: ctl, proc: &processed{seen: map[string][]handling{}, marked: map[string]bool{}}, topic: topic, newBrk: newBroker}
	for _, color := range []registry.Color{registry.ColorBlue, registry.ColorGreen} {
		for k := 1; k <= perColor; k++ {
			in := &instance{name: fmt.Sprintf("%s-%d", color, k), color: color}
			c, err := mq.NewConsumer(mq.ConsumerConfig{
				Broker: newBroker(t), Topic: topic, Group: "billing", Logger: testutil.Logger(t),
				Handler: func(_ context.Context, m mq.Message) error {
					if in.color == registry.ColorBlue {
						r.proc.wait()
					}
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
	for _, in := range r.insts {
		if in.color == color {
			testutil.Eventually(r.t, fmt.Sprintf("%s in groups %v", in.name, want),
				func() bool { return slices.Equal(in.consumer.Groups(), want) })
		}
	}
}

// waitProcessed waits until n distinct messages have been handled.
func (r *rig) waitProcessed(n int) {
	r.t.Helper()
	testutil.EventuallyWithin(r.t, 60*time.Second, fmt.Sprintf("%d messages processed", n),
		func() bool { return r.proc.distinct() >= n })
}

// publishers is how many messages are in flight at once while publishing: each Publish
// returns once the broker has stored the message, so one at a time would make the test
// measure round trips.
const publishers = 32

// publish sends messages from..to-1, cycling blue, green and untagged producers, and returns
// once the broker has stored every one.
func (r *rig) publish(producers []*mq.Producer, from, to int) {
	r.t.Helper()
	r.publishEach(to-from, func(k int) (*mq.Producer, mq.Message) {
		k += from
		return producers[k%3], mq.Message{Value: []byte(fmt.Sprintf("m-%05d-%d", k, k%3))}
	})
}

// publishEach publishes the n messages msg(0..n-1) with publishers in flight at once.
func (r *rig) publishEach(n int, msg func(k int) (*mq.Producer, mq.Message)) {
	r.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, publishers)
	for w := range publishers {
		wg.Go(func() {
			for k := w; k < n && errs[w] == nil; k += publishers {
				p, m := msg(k)
				ctx, cancel := context.WithTimeout(context.Background(), testutil.Deadline)
				if err := p.Publish(ctx, r.topic, m); err != nil {
					errs[w] = fmt.Errorf("publish %s: %w", m.Value, err)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

// MarkerKeys is how many keys the end-of-test markers of each color are published under.
// Markers with a key go to the partition the key hashes to (Kafka), so the markers of each
// color reach every partition; mq/kafka checks that these keys cover its test topic's
// partitions.
const MarkerKeys = 32

// MarkerKey is the key of marker k (0 ≤ k < MarkerKeys).
func MarkerKey(k int) []byte { return fmt.Appendf(nil, "marker-%02d", k) }

// settle returns once no handling of the messages published so far can still come. It
// publishes markers — for each color tag, one under each of MarkerKeys keys — after every
// message was stored, and waits until every marker has been handled. A group consumes each
// partition (Kafka) in order, one member at a time: a member gives a partition up only after
// it committed what it handled, and the next owner resumes from that commit. So a duplicate,
// which is a re-read from an older commit by the next owner, comes before the marker of that
// group and partition. JetStream offers no such order across a group's members (it hands
// messages to them concurrently and redelivers after AckWait); there settled, the adapter's
// check that no message is pending or awaiting acknowledgement in any group, is what makes
// the barrier sound.
func (r *rig) settle(producers []*mq.Producer, settled SettledFunc) {
	r.t.Helper()
	tags := []string{"blue", "green", "untagged"}
	r.publishEach(len(tags)*MarkerKeys, func(k int) (*mq.Producer, mq.Message) {
		c := k % len(tags)
		return producers[c], mq.Message{Key: MarkerKey(k / len(tags)), Value: []byte(fmt.Sprintf("marker-%s-%02d", tags[c], k/len(tags)))}
	})
	testutil.Eventually(r.t, "every end-of-test marker handled", func() bool {
		r.proc.mu.Lock()
		defer r.proc.mu.Unlock()
		return r.proc.markers == len(tags)*MarkerKeys
	})
	if settled != nil {
		groups := []string{"billing", mq.GroupName("billing", registry.ColorBlue), mq.GroupName("billing", registry.ColorGreen)}
		testutil.EventuallyNoError(r.t, fmt.Sprintf("the broker settled for %v", groups), func() error {
			return settled(context.Background(), r.topic, groups)
		})
	}
}

// SettledFunc reports whether the broker has nothing left to deliver to groups of topic,
// for the first time or again: nil when settled, else an error saying what is outstanding.
type SettledFunc func(ctx context.Context, topic string, groups []string) error

// Option adapts a conformance test to an adapter.
type Option func(*options)

type options struct{ settled SettledFunc }

// Settled gives TestIsolationAcrossADrain the adapter's check that nothing is outstanding on
// the broker, for a broker whose groups do not consume in order (JetStream), so that the
// end-of-test markers alone do not show that no late duplicate can come.
func Settled(f SettledFunc) Option { return func(o *options) { o.settled = f } }

// TestIsolationAcrossADrain: 2 blue and 2 green instances, 3,000 messages from blue, green
// and untagged producers; blue is drained in the middle, while a blue handler is still busy
// with a message, and then undrained. Every message is processed, by an instance of the
// group of its color, and none by a blue instance between the end of its drain and the
// undrain. At the end it waits until no handling can still come (settle) before it judges:
// end-of-test markers, and the adapter's Settled check if given.
func TestIsolationAcrossADrain(t *testing.T, newBroker NewBroker, opts ...Option) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	r := newRig(t, newBroker, "orders.created", 2)
	r.waitGroups(registry.ColorBlue, "billing", "billing-blue")
	r.waitGroups(registry.ColorGreen, "billing", "billing-green")
	b := newBroker(t)
	producers := []*mq.Producer{mq.NewProducer(b, registry.ColorBlue), mq.NewProducer(b, registry.ColorGreen), mq.NewProducer(b, registry.ColorNone)}
	const total = 3000
	ctx := context.Background()

	r.proc.holdBlue()         // the drain begins with blue busy
	t.Cleanup(r.proc.release) // before the consumers stop, should the test fail while held
	r.publish(producers, 0, 1200)
	testutil.Eventually(t, "a blue handler busy with a message", func() bool { return r.proc.holding() > 0 })
	if _, err := r.ctl.Shift(ctx, "trade", 0); err != nil { // drain blue
		t.Fatal(err)
	}
	testutil.Eventually(t, "the rule client shows blue drained", func() bool {
		rule, ok := r.rules.ChannelOf("orders")
		return ok && traffic.EffectivePercent(rule) == 0
	})
	r.proc.release() // the blue consumers finish what they hold, then leave
	r.waitGroups(registry.ColorBlue)
	drained := time.Now()
	r.waitGroups(registry.ColorGreen, "billing", "billing-blue", "billing-green")
	r.publish(producers, 1200, 2100)
	r.waitProcessed(2100) // everything sent while drained is handled by green
	undrain := time.Now()
	if _, err := r.ctl.Shift(ctx, "trade", 50); err != nil {
		t.Fatal(err)
	}
	r.waitGroups(registry.ColorBlue, "billing", "billing-blue")
	r.waitGroups(registry.ColorGreen, "billing", "billing-green")
	r.publish(producers, 2100, total)
	r.waitProcessed(total)
	r.settle(producers, o.settled) // no late duplicate can come after this

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
// message is lost. stop takes the broker down and returns once every client has seen it
// gone (the adapter's test knows how to tell); start brings it back.
func TestBrokerOutage(t *testing.T, newBroker NewBroker, stop, start func()) {
	r := newRig(t, newBroker, "orders.paid", 1)
	r.waitGroups(registry.ColorBlue, "billing", "billing-blue")
	r.waitGroups(registry.ColorGreen, "billing", "billing-green")
	b := newBroker(t)
	producers := []*mq.Producer{mq.NewProducer(b, registry.ColorBlue), mq.NewProducer(b, registry.ColorGreen), mq.NewProducer(b, registry.ColorNone)}
	r.publish(producers, 0, 600)
	r.waitProcessed(600)
	stop()
	start()
	r.publish(producers, 600, 1200)
	r.waitProcessed(1200)
	t.Logf("after the outage: %d messages, %d handlings", r.proc.distinct(), r.proc.n)
}
