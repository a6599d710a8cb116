package mq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/switchyard-go/switchyard/deploy"
)

// Message is one message. Headers may be nil.
type Message struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers map[string]string
	// Delivery counts deliveries of this message to its group: 1 the first time, more on a
	// redelivery; 0 when the broker cannot tell.
	Delivery int
}

// Color is the message's color tag, "" when untagged.
func (m Message) Color() deploy.Color { return deploy.Color(m.Headers[deploy.ColorHeader]) }

// Broker is what an adapter (mq/natsjs, mq/kafka) implements.
type Broker interface {
	// Publish sends m to topic.
	Publish(ctx context.Context, topic string, m Message) error
	// Subscribe joins consumer group `group` on topic: every message of the topic reaches one
	// member of every group. fn returning nil acknowledges the message; an error asks for
	// redelivery.
	Subscribe(ctx context.Context, topic, group string, fn func(context.Context, Message) error) (Subscription, error)
}

// Subscription is one membership of a group.
type Subscription interface {
	// Stop keeps the package's Stop contract (see the package doc): it stops fetching, hands
	// back the messages fetched but not started, lets the calls of fn in progress finish and
	// acknowledges them, and returns nil once no more calls will be made. If ctx ends first,
	// it cancels the ctx of the calls in progress, releases what it holds (in the background
	// if it must), and returns an error wrapping ctx's error, by ctx's deadline.
	Stop(ctx context.Context) error
}

// Producer tags every message with the producing instance's color.
type Producer struct {
	b     Broker
	color deploy.Color
}

// NewProducer returns a producer for an instance of color (none: messages go untagged).
func NewProducer(b Broker, color deploy.Color) *Producer { return &Producer{b: b, color: color} }

// Publish sends m to topic with x-deploy-color set to the producer's color (any tag already
// in m.Headers is replaced; m's map is not modified).
func (p *Producer) Publish(ctx context.Context, topic string, m Message) error {
	if p.color != deploy.None {
		h := make(map[string]string, len(m.Headers)+1)
		maps.Copy(h, m.Headers)
		h[deploy.ColorHeader] = string(p.color)
		m.Headers = h
	} else if _, tagged := m.Headers[deploy.ColorHeader]; tagged {
		m.Headers = maps.Clone(m.Headers)
		delete(m.Headers, deploy.ColorHeader)
	}
	return p.b.Publish(ctx, topic, m)
}

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	Broker Broker // required
	Topic  string // required
	// Group is the logical consumer group G; on the broker it becomes G, G-blue and G-green.
	Group string // required
	// Handler processes a message. It must be idempotent: around a drain, a message in
	// flight on a stopping instance can be delivered again to the instance taking over.
	Handler func(ctx context.Context, m Message) error // required
	// Drains tells the Consumer its instance's color and which colors of its app are drained,
	// and when that changes: in a service the lifecycle.Instance, or deploy.ManualDrains to
	// set them by hand. Nil: a colorless consumer, in group G only, never drained.
	Drains deploy.Drains
	// Logger, default slog.Default().
	Logger *slog.Logger
	// MeterProvider receives switchyard.mq.messages (see the package doc). Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
}

// Consumer runs one logical consumer group for one instance (DESIGN.md "MQ isolation"):
//
//   - colorless instance: group G, every message;
//   - blue instance: G (untagged messages) and G-blue (blue messages), or nothing while blue
//     is drained; while green is drained it also runs G-green;
//   - green: symmetric.
//
// A group receives every message of the topic and acknowledges, without calling the handler,
// those that are not its color, so every message is processed by exactly the group of its
// color. The Consumer follows its Drains: Start joins the groups they call for now, and
// until Stop a goroutine of its own joins or leaves groups at each change. It is a
// lifecycle.Component (lifecycle.Instance.Append): started once the instance is registered,
// stopped while it drains. It counts redeliveries (Redeliveries).
//
// Locking: mu guards the fields below it and serializes reconciling; it is held while
// subscriptions start and stop (bounded by the ctx given: Stop's ctx also bounds a reconcile
// of the following goroutine that Stop waits for), never while the handler runs. followMu
// guards follow alone, so that Stop reaches the goroutine while it reconciles under mu; it is
// taken inside mu (Start) or alone (Stop), never the other way round.
type Consumer struct {
	cfg     ConsumerConfig
	color   deploy.Color // the Drains' color, fixed
	redeliv atomic.Uint64
	worker  deploy.Worker // the Drains, if they are told of work; else nil
	handled metric.Int64Counter
	// outcome[message color][failed]: switchyard.mq.messages' attributes, built once
	outcome [3][2]metric.AddOption

	followMu sync.Mutex
	follow   *follower // the goroutine following the drains, while started

	mu      sync.Mutex
	started bool
	subs    map[string]Subscription // broker group name → membership
	changed <-chan struct{}         // closed at the next change of the drains reconciled to
}

// follower is the goroutine that reconciles at each change of the drains, until stop.
type follower struct {
	stop   chan struct{}      // closed by Stop
	cancel context.CancelFunc // ends the ctx of its reconcile in progress (at Stop's deadline)
	done   chan error         // its last reconcile's error if Stop came during it, then closed
}

// NewConsumer checks cfg.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	switch {
	case cfg.Broker == nil:
		return nil, errors.New("mq: ConsumerConfig.Broker is nil; pass an adapter such as natsjs.New(...)")
	case cfg.Topic == "" || cfg.Group == "":
		return nil, errors.New("mq: ConsumerConfig.Topic and Group are required")
	case cfg.Handler == nil:
		return nil, errors.New("mq: ConsumerConfig.Handler is nil")
	}
	color := deploy.None
	if cfg.Drains != nil {
		color = cfg.Drains.Color()
	}
	if !color.Valid() {
		return nil, fmt.Errorf("mq: ConsumerConfig.Drains has color %q; want blue, green or none", color)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	c := &Consumer{cfg: cfg, color: color, subs: map[string]Subscription{}}
	c.worker, _ = cfg.Drains.(deploy.Worker)
	handled, err := cfg.MeterProvider.Meter(meterName).Int64Counter("switchyard.mq.messages",
		metric.WithDescription("Messages the consumer's handler ran, by logical group, the consuming instance's color, the message's color tag and outcome."),
		metric.WithUnit("{message}"))
	if err != nil {
		cfg.Logger.Warn("mq: cannot create metric switchyard.mq.messages; it is not recorded", "err", err)
		handled = noop.Int64Counter{}
	}
	c.handled = handled
	for mi, mc := range messageColors {
		for fi, outcome := range [2]string{"ok", "error"} {
			c.outcome[mi][fi] = metric.WithAttributeSet(attribute.NewSet(
				attribute.String("switchyard.group", cfg.Group),
				attribute.String("switchyard.color", string(color)),
				attribute.String("switchyard.message_color", string(mc)),
				attribute.String("switchyard.outcome", outcome)))
		}
	}
	return c, nil
}

const meterName = "github.com/switchyard-go/switchyard/mq"

// messageColors are the message colors a handler sees, as filter reads them: untagged (or
// tagged with neither color), blue, green.
var messageColors = [3]deploy.Color{deploy.None, deploy.Blue, deploy.Green}

// Start joins the groups the drains call for now and follows them until Stop. If a group
// cannot be joined it leaves those it joined and returns the error.
func (c *Consumer) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return nil
	}
	c.started = true
	if err := c.reconcileLocked(ctx); err != nil {
		c.started = false
		return errors.Join(err, c.reconcileLocked(ctx))
	}
	if c.color != deploy.None { // a colorless consumer is never drained
		fctx, cancel := context.WithCancel(context.Background())
		f := &follower{stop: make(chan struct{}), cancel: cancel, done: make(chan error, 1)}
		c.followMu.Lock()
		c.follow = f
		c.followMu.Unlock()
		go c.following(fctx, f)
	}
	return nil
}

// following reconciles at each change of the drains until f.stop. A reconcile that fails is
// logged and tried again at the next change.
func (c *Consumer) following(ctx context.Context, f *follower) {
	defer close(f.done)
	defer f.cancel()
	for {
		c.mu.Lock()
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-f.stop:
			return
		case <-changed:
		}
		c.mu.Lock()
		select {
		case <-f.stop: // Stop came first: it reconciles to nothing itself
			c.mu.Unlock()
			return
		default:
		}
		err := c.reconcileLocked(ctx)
		c.mu.Unlock()
		select {
		case <-f.stop: // Stop waited for this reconcile: its error is Stop's
			f.done <- err
			return
		default:
		}
		if err != nil {
			c.cfg.Logger.Error("mq: could not follow the drains; retried at their next change", "group", c.cfg.Group, "color", c.color, "err", err)
		}
	}
}

// Stop stops following the drains and leaves every group at once, after the handler calls
// in progress, under the package's Stop contract: calls still running when ctx ends have
// their ctx cancelled, and Stop returns by ctx's deadline with an error naming the groups
// concerned. A change of the drains being followed when Stop begins is finished first, under
// the same ctx.
func (c *Consumer) Stop(ctx context.Context) error {
	c.followMu.Lock()
	f := c.follow
	c.follow = nil
	c.followMu.Unlock()
	var errs []error
	if f != nil {
		close(f.stop)
		cut := context.AfterFunc(ctx, f.cancel)
		err := <-f.done
		cut()
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("mq: leaving groups for a drain when Stop began, cut when Stop's ctx ended (%w): %w", ctx.Err(), err)
		}
		errs = append(errs, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started = false
	errs = append(errs, c.reconcileLocked(ctx))
	return errors.Join(errs...)
}

// Groups are the broker groups this instance is in now, sorted.
func (c *Consumer) Groups() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.subs))
}

// Redeliveries counts messages handled that the broker said it had delivered before.
func (c *Consumer) Redeliveries() uint64 { return c.redeliv.Load() }

// GroupName is the broker group of logical group g for messages of color ("" is the origin).
func GroupName(g string, color deploy.Color) string {
	if color == deploy.None {
		return g
	}
	return g + "-" + string(color)
}

// wantedLocked maps broker group → the color it processes ("*" for every message), for the
// drains d.
func (c *Consumer) wantedLocked(d deploy.Drain) map[string]string {
	want := map[string]string{}
	if !c.started {
		return want
	}
	g, own := c.cfg.Group, c.color
	if own == deploy.None {
		want[g] = "*"
		return want
	}
	if d.Of(own) {
		return want
	}
	want[g] = ""
	want[GroupName(g, own)] = string(own)
	if other := own.Other(); d.Of(other) {
		want[GroupName(g, other)] = string(other)
	}
	return want
}

// reconcileLocked joins and leaves groups as the drains now call for, and notes the channel
// that tells their next change.
func (c *Consumer) reconcileLocked(ctx context.Context) error {
	var d deploy.Drain
	if c.cfg.Drains != nil {
		d, c.changed = c.cfg.Drains.Drained()
	}
	want := c.wantedLocked(d)
	// Leave first: a drained instance stops before others start. The groups left stop
	// together, so that none goes on handling while another finishes its call in progress.
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		errs  []error
	)
	for name, sub := range c.subs {
		if _, ok := want[name]; !ok {
			wg.Go(func() {
				err := sub.Stop(ctx)
				if err != nil {
					errMu.Lock()
					errs = append(errs, fmt.Errorf("mq: leave group %s: %w", name, err))
					errMu.Unlock()
				}
				c.cfg.Logger.Info("mq: left group", "group", name, "color", c.color, "err", err)
			})
			delete(c.subs, name)
		}
	}
	wg.Wait()
	for name, color := range want {
		if _, ok := c.subs[name]; ok {
			continue
		}
		sub, err := c.cfg.Broker.Subscribe(ctx, c.cfg.Topic, name, c.filter(color))
		if err != nil {
			errs = append(errs, fmt.Errorf("mq: join group %s: %w", name, err))
			continue
		}
		c.subs[name] = sub
		c.cfg.Logger.Info("mq: joined group", "group", name, "color", c.color)
	}
	return errors.Join(errs...)
}

// filter wraps the handler for a group that processes messages of color ("" the origin:
// untagged, or tagged with neither blue nor green; "*" all) and acknowledges the rest
// untouched.
func (c *Consumer) filter(color string) func(context.Context, Message) error {
	return func(ctx context.Context, m Message) error {
		mc := m.Color()
		if mc != deploy.Blue && mc != deploy.Green {
			mc = deploy.None
		}
		if color != "*" && string(mc) != color {
			return nil
		}
		if m.Delivery > 1 {
			c.redeliv.Add(1)
		}
		err := c.cfg.Handler(ctx, m)
		c.handledOne(ctx, mc, err != nil)
		return err
	}
}

// handledOne counts a message the handler ran (switchyard.mq.messages) and tells the
// Drains, if they are a deploy.Worker. mc is the message's color as filter reads it.
func (c *Consumer) handledOne(ctx context.Context, mc deploy.Color, failed bool) {
	mi := 0
	switch mc {
	case deploy.Blue:
		mi = 1
	case deploy.Green:
		mi = 2
	}
	fi := 0
	if failed {
		fi = 1
	}
	c.handled.Add(ctx, 1, c.outcome[mi][fi])
	if c.worker != nil {
		c.worker.DidWork(deploy.MessageWork, failed)
	}
}
