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

	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

// ColorHeader is the message header that carries the producing instance's color.
const ColorHeader = "x-deploy-color"

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
func (m Message) Color() registry.Color { return registry.Color(m.Headers[ColorHeader]) }

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
	color registry.Color
}

// NewProducer returns a producer for an instance of color (none: messages go untagged).
func NewProducer(b Broker, color registry.Color) *Producer { return &Producer{b: b, color: color} }

// Publish sends m to topic with x-deploy-color set to the producer's color (any tag already
// in m.Headers is replaced; m's map is not modified).
func (p *Producer) Publish(ctx context.Context, topic string, m Message) error {
	if p.color != registry.ColorNone {
		h := make(map[string]string, len(m.Headers)+1)
		maps.Copy(h, m.Headers)
		h[ColorHeader] = string(p.color)
		m.Headers = h
	} else if _, tagged := m.Headers[ColorHeader]; tagged {
		m.Headers = maps.Clone(m.Headers)
		delete(m.Headers, ColorHeader)
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
	// Color is this instance's color. Set by lifecycle (UseRules) when the Consumer is one of
	// its components.
	Color registry.Color
	// Rules and App tell the Consumer which colors are drained. Set by lifecycle (UseRules);
	// without them the Consumer never sees a drain.
	Rules *traffic.Client
	App   string
	// Logger, default slog.Default().
	Logger *slog.Logger
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
// color. It is a lifecycle.Component: lifecycle starts it once the instance is registered,
// stops it while draining, and forwards rule events, which make it re-read the rule and
// reconcile its groups. It counts redeliveries (Redeliveries).
//
// Locking: mu guards the fields below it and serializes reconciling; it is held while
// subscriptions start and stop (bounded by the ctx given), never while the handler runs.
type Consumer struct {
	cfg     ConsumerConfig
	redeliv atomic.Uint64

	mu      sync.Mutex
	started bool
	subs    map[string]Subscription // broker group name → membership
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
	case !cfg.Color.Valid():
		return nil, fmt.Errorf("mq: color %q must be blue, green or empty", cfg.Color)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Consumer{cfg: cfg, subs: map[string]Subscription{}}, nil
}

// UseRules tells the Consumer its app, color and where to read the app's rule. lifecycle
// calls it before Start.
func (c *Consumer) UseRules(rules *traffic.Client, app string, color registry.Color) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg.Rules, c.cfg.App, c.cfg.Color = rules, app, color
}

// Start joins the groups the current rule calls for.
func (c *Consumer) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started = true
	return c.reconcileLocked(ctx)
}

// Stop leaves every group at once, after the handler calls in progress, under the package's
// Stop contract: calls still running when ctx ends have their ctx cancelled, and Stop returns
// by ctx's deadline with an error naming the groups concerned.
func (c *Consumer) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started = false
	return c.reconcileLocked(ctx)
}

// HandleEvent re-reads the rule and joins or leaves groups accordingly (lifecycle.EventHandler).
func (c *Consumer) HandleEvent(traffic.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.reconcileLocked(context.Background()); err != nil {
		c.cfg.Logger.Error("mq: could not follow the rule; retried on the next event", "group", c.cfg.Group, "err", err)
	}
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
func GroupName(g string, color registry.Color) string {
	if color == registry.ColorNone {
		return g
	}
	return g + "-" + string(color)
}

// wantedLocked maps broker group → the color it processes ("*" for every message).
func (c *Consumer) wantedLocked() map[string]string {
	want := map[string]string{}
	if !c.started {
		return want
	}
	g, own := c.cfg.Group, c.cfg.Color
	if own == registry.ColorNone {
		want[g] = "*"
		return want
	}
	percent := float64(traffic.EvenSplit)
	if c.cfg.Rules != nil {
		if r, ok := c.cfg.Rules.ChannelOf(c.cfg.App); ok {
			percent = traffic.EffectivePercent(r)
		}
	}
	drained := map[registry.Color]bool{registry.ColorBlue: percent == 0, registry.ColorGreen: percent == 100}
	if drained[own] {
		return want
	}
	want[g] = ""
	want[GroupName(g, own)] = string(own)
	other := registry.ColorGreen
	if own == registry.ColorGreen {
		other = registry.ColorBlue
	}
	if drained[other] {
		want[GroupName(g, other)] = string(other)
	}
	return want
}

func (c *Consumer) reconcileLocked(ctx context.Context) error {
	want := c.wantedLocked()
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
				c.cfg.Logger.Info("mq: left group", "group", name, "color", c.cfg.Color, "err", err)
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
		c.cfg.Logger.Info("mq: joined group", "group", name, "color", c.cfg.Color)
	}
	return errors.Join(errs...)
}

// filter wraps the handler for a group that processes messages of color ("" the origin:
// untagged, or tagged with neither blue nor green; "*" all) and acknowledges the rest
// untouched.
func (c *Consumer) filter(color string) func(context.Context, Message) error {
	return func(ctx context.Context, m Message) error {
		mc := m.Color()
		if mc != registry.ColorBlue && mc != registry.ColorGreen {
			mc = registry.ColorNone
		}
		if color != "*" && string(mc) != color {
			return nil
		}
		if m.Delivery > 1 {
			c.redeliv.Add(1)
		}
		return c.cfg.Handler(ctx, m)
	}
}
