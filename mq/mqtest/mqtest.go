package mqtest

import (
	"context"
	"errors"
	"fmt"
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
	color    deploy.Color
	at       time.Time
}

func (p *processed) add(id, instance string, color deploy.Color) {
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
	color    deploy.Color
	drains   *deploy.ManualDrains
	consumer *mq.Consumer
}

// rig is blue and green consumer instances of one app, each following drains of its own.
type rig struct {
	t      *testing.T
	insts  []*instance
	proc   *processed
	topic  string
	newBrk NewBroker
}

func newRig(t *testing.T, newBroker NewBroker, topic string, perColor int) *rig {
	ctx := context.Background()
	r := &rig{t: t, proc: &processed{seen: map[string][]handling{}, marked: map[string]bool{}}, topic: topic, newBrk: newBroker}
	for _, color := range []deploy.Color{deploy.Blue, deploy.Green} {
		for k := 1; k <= perColor; k++ {
			in := &instance{name: fmt.Sprintf("%s-%d", color, k), color: color, drains: deploy.NewManualDrains(color)}
			c, err := mq.NewConsumer(mq.ConsumerConfig{
				Broker: newBroker(t), Topic: topic, Group: "billing", Drains: in.drains, Logger: testutil.Logger(t),
				Handler: func(_ context.Context, m mq.Message) error {
					if in.color == deploy.Blue {
						r.proc.wait()
					}
					r.proc.add(string(m.Value), in.name, in.color)
					return nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
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

// drain sets every instance's drains to d, as a rule change reaches every instance.
func (r *rig) drain(d deploy.Drain) {
	for _, in := range r.insts {
		in.drains.Set(d)
	}
}

// waitGroups waits until every instance of color is in exactly the groups want.
func (r *rig) waitGroups(color deploy.Color, want ...string) {
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
		groups := []string{"billing", mq.GroupName("billing", deploy.Blue), mq.GroupName("billing", deploy.Green)}
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

// DrainGrace is how long after a drain (its drains set) a consumer of the drained color may
// still handle messages in TestIsolationAcrossADrain: the time to see the drain and finish the
// calls in progress. Messages it has fetched but not started must go back to the broker at
// once, for the other color, rather than be handled late.
const DrainGrace = 300 * time.Millisecond

// TestIsolationAcrossADrain: 2 blue and 2 green instances, 3,000 messages from blue, green
// and untagged producers; blue is drained in the middle, while a blue handler is still busy
// with a message, and then undrained. Every message is processed, by an instance of the
// group of its color, none by a blue instance between the end of its drain and the
// undrain, and none by blue later than DrainGrace after the drain was set. At the end it
// waits until no handling can still come (settle) before it judges: end-of-test markers, and
// the adapter's Settled check if given.
func TestIsolationAcrossADrain(t *testing.T, newBroker NewBroker, opts ...Option) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	r := newRig(t, newBroker, "orders.created", 2)
	r.waitGroups(deploy.Blue, "billing", "billing-blue")
	r.waitGroups(deploy.Green, "billing", "billing-green")
	b := newBroker(t)
	producers := []*mq.Producer{mq.NewProducer(b, deploy.Blue), mq.NewProducer(b, deploy.Green), mq.NewProducer(b, deploy.None)}
	const total = 3000

	r.proc.holdBlue()         // the drain begins with blue busy
	t.Cleanup(r.proc.release) // before the consumers stop, should the test fail while held
	r.publish(producers, 0, 1200)
	testutil.Eventually(t, "a blue handler busy with a message", func() bool { return r.proc.holding() > 0 })
	drainAt := time.Now() // the drain event: what lifecycle does at the rule's change
	r.drain(deploy.Drain{Blue: true})
	r.proc.release() // the blue consumers finish what they hold, then leave
	r.waitGroups(deploy.Blue)
	drained := time.Now()
	r.waitGroups(deploy.Green, "billing", "billing-blue", "billing-green")
	r.publish(producers, 1200, 2100)
	r.waitProcessed(2100) // everything sent while drained is handled by green
	undrain := time.Now()
	r.drain(deploy.Drain{})
	r.waitGroups(deploy.Blue, "billing", "billing-blue")
	r.waitGroups(deploy.Green, "billing", "billing-green")
	r.publish(producers, 2100, total)
	r.waitProcessed(total)
	r.settle(producers, o.settled) // no late duplicate can come after this

	r.proc.mu.Lock()
	defer r.proc.mu.Unlock()
	dups, byBlueWhileDrained, byBlueAfterGrace, wrongGroup := 0, 0, 0, 0
	var lastBlue time.Duration // the last handling by blue after the drain, relative to it
	for id, hs := range r.proc.seen {
		dups += len(hs) - 1
		tag := id[len(id)-1] // '0' blue, '1' green, '2' untagged
		for _, h := range hs {
			if h.color == deploy.Blue && h.at.After(drained) && h.at.Before(undrain) {
				byBlueWhileDrained++
			}
			if h.color == deploy.Blue && h.at.Before(undrain) {
				if h.at.After(drainAt.Add(DrainGrace)) {
					byBlueAfterGrace++
				}
				lastBlue = max(lastBlue, h.at.Sub(drainAt))
			}
			// green-tagged messages belong to billing-green, which only green instances run
			// here; blue ones to billing-blue (blue instances, or green ones while blue is
			// drained); untagged ones to billing, which both run.
			if tag == '1' && h.color != deploy.Green {
				wrongGroup++
			}
		}
	}
	var redeliveries uint64
	for _, in := range r.insts {
		redeliveries += in.consumer.Redeliveries()
	}
	t.Logf("%d messages, %d handlings: %d duplicates, %d redeliveries counted by the consumers", len(r.proc.seen), r.proc.n, dups, redeliveries)
	t.Logf("drain of blue: %d messages handled by blue later than %v after it, the last %v after it; blue out of every group %v after it",
		byBlueAfterGrace, DrainGrace, lastBlue.Round(time.Millisecond), drained.Sub(drainAt).Round(time.Millisecond))
	if len(r.proc.seen) != total {
		t.Fatalf("%d of %d messages processed", len(r.proc.seen), total)
	}
	if byBlueAfterGrace != 0 {
		t.Fatalf("%d messages were handled by blue later than %v after its drain (the last %v after it): a drained consumer must hand back what it has not started",
			byBlueAfterGrace, DrainGrace, lastBlue.Round(time.Millisecond))
	}
	if byBlueWhileDrained != 0 {
		t.Fatalf("%d messages were processed by a blue instance after its drain completed", byBlueWhileDrained)
	}
	if wrongGroup != 0 {
		t.Fatalf("%d green messages were processed outside billing-green", wrongGroup)
	}
	var blueOnGreen int
	for id, hs := range r.proc.seen {
		if strings.HasSuffix(id, "-0") && hs[0].color == deploy.Green {
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
	r.waitGroups(deploy.Blue, "billing", "billing-blue")
	r.waitGroups(deploy.Green, "billing", "billing-green")
	b := newBroker(t)
	producers := []*mq.Producer{mq.NewProducer(b, deploy.Blue), mq.NewProducer(b, deploy.Green), mq.NewProducer(b, deploy.None)}
	r.publish(producers, 0, 600)
	r.waitProcessed(600)
	stop()
	start()
	r.publish(producers, 600, 1200)
	r.waitProcessed(1200)
	t.Logf("after the outage: %d messages, %d handlings", r.proc.distinct(), r.proc.n)
}

// StopTopic is the topic TestStopContract uses.
const StopTopic = "orders.stopped"

// stopWatch is a Stop ctx that reports when Stop first waits on it: by then Stop has done
// what it does first (stop fetching, and cancel the handlers' ctx, if it wrongly does).
type stopWatch struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (w *stopWatch) Done() <-chan struct{} {
	w.once.Do(func() { w.waiting <- struct{}{} })
	return w.Context.Done()
}

// TestStopContract checks mq.Subscription's Stop contract on one group member:
//
//   - "finish": a handler call in progress when Stop begins keeps a live ctx and finishes;
//     its message is acknowledged (a member joining the group afterwards does not get it
//     again, and the adapter's Settled check, if given, shows nothing outstanding) and Stop
//     returns nil;
//   - "deadline": a call still in progress when Stop's ctx expires has its ctx cancelled
//     then, not before; Stop returns by the deadline (a little slack for a loaded machine)
//     with an error wrapping ctx's; and once the handler has returned, no goroutine of the
//     subscription is left (goleak) within 5 s: what Stop leaves to finish in the background
//     (a client closing) is bounded.
func TestStopContract(t *testing.T, newBroker NewBroker, opts ...Option) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ctx := context.Background()
	publish := func(b mq.Broker, value string) {
		t.Helper()
		pctx, cancel := context.WithTimeout(ctx, testutil.Deadline)
		defer cancel()
		// one key: one partition (Kafka), so a redelivery would come before what follows
		if err := b.Publish(pctx, StopTopic, mq.Message{Key: []byte("stop"), Value: []byte(value)}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("finish", func(t *testing.T) {
		b := newBroker(t)
		publish(b, "a")
		started, release, ctxAtRelease := make(chan struct{}, 1), make(chan struct{}), make(chan error, 1)
		sub, err := b.Subscribe(ctx, StopTopic, "stop-finish", func(hctx context.Context, m mq.Message) error {
			if string(m.Value) != "a" {
				return nil
			}
			started <- struct{}{}
			<-release
			ctxAtRelease <- hctx.Err()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Receive(t, "the handler called with a", started)
		sctx, cancel := context.WithTimeout(ctx, testutil.Deadline)
		defer cancel()
		w := &stopWatch{Context: sctx, waiting: make(chan struct{}, 1)}
		stopped := make(chan error, 1)
		go func() { stopped <- sub.Stop(w) }()
		testutil.Receive(t, "Stop waiting for the call in progress", w.waiting)
		close(release)
		if err := testutil.Receive(t, "the handler's ctx at its release", ctxAtRelease); err != nil {
			t.Fatalf("the handler's ctx was cancelled while Stop's ctx was live (%v): a call in progress must be let finish", err)
		}
		if err := testutil.Receive(t, "Stop to return", stopped); err != nil {
			t.Fatalf("Stop: %v", err)
		}

		var mu sync.Mutex
		got := map[string]int{}
		sub2, err := b.Subscribe(ctx, StopTopic, "stop-finish", func(_ context.Context, m mq.Message) error {
			mu.Lock()
			defer mu.Unlock()
			got[string(m.Value)]++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub2.Stop(ctx) })
		publish(b, "b")
		testutil.Eventually(t, "b handled by the next member", func() bool { mu.Lock(); defer mu.Unlock(); return got["b"] > 0 })
		if o.settled != nil {
			testutil.EventuallyNoError(t, "the broker settled for stop-finish", func() error {
				return o.settled(ctx, StopTopic, []string{"stop-finish"})
			})
		}
		mu.Lock()
		defer mu.Unlock()
		if got["a"] != 0 {
			t.Fatalf("a was delivered again after its call finished during Stop: it was not acknowledged")
		}
	})

	t.Run("deadline", func(t *testing.T) {
		b := newBroker(t)
		// A member joins and leaves first, so that what the broker itself runs for the group
		// (an in-process server's goroutines) exists before the goroutines are counted.
		sub0, err := b.Subscribe(ctx, StopTopic, "stop-deadline", func(context.Context, mq.Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if err := sub0.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		publish(b, "c")
		before := goleak.IgnoreCurrent()
		started, late := make(chan struct{}, 1), make(chan struct{})
		cancelledAt := make(chan time.Time, 1)
		sub, err := b.Subscribe(ctx, StopTopic, "stop-deadline", func(hctx context.Context, m mq.Message) error {
			if string(m.Value) != "c" {
				return nil
			}
			started <- struct{}{}
			<-hctx.Done()
			cancelledAt <- time.Now()
			<-late // a handler that takes a moment to return once cancelled
			return hctx.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Receive(t, "the handler called with c", started)
		const timeout = 300 * time.Millisecond
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		deadline, _ := sctx.Deadline()
		err = sub.Stop(sctx)
		over := time.Since(deadline)
		close(late)
		t.Logf("Stop with a %v ctx and a call in progress returned %v after its deadline: %v", timeout, over.Round(time.Millisecond), err)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Stop returned %v with a call still in progress at its deadline; want an error wrapping %v", err, context.DeadlineExceeded)
		}
		if at := testutil.Receive(t, "the handler's ctx cancelled", cancelledAt); at.Before(deadline) {
			t.Errorf("the handler's ctx was cancelled %v before Stop's deadline", deadline.Sub(at))
		}
		if over > stopSlack {
			t.Errorf("Stop returned %v after its ctx's deadline (slack %v)", over, stopSlack)
		}
		// What Stop left to finish in the background (a client closing) must end, soon.
		var left error
		if err := testutil.Poll(ctx, 5*time.Second, func() bool { left = goleak.Find(before); return left == nil }); err != nil {
			t.Fatalf("goroutines left 5s after Stop's ctx expired and the handler returned: %v", left)
		}
		t.Logf("no goroutine of the subscription left %v after Stop's deadline", time.Since(deadline).Round(time.Millisecond))
	})
}

// stopSlack is how late after its ctx's deadline Stop may return on a loaded machine.
const stopSlack = 250 * time.Millisecond
