package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard-go/switchyard/mq"
)

// Options configures the Broker.
type Options struct {
	// AckWait is how long the server waits for an acknowledgement before redelivering.
	// Default 30 s.
	AckWait time.Duration
	// MaxAckPending caps the unacknowledged messages of a group, over all its members (in
	// their handlers and fetched ahead). Default 256. Keep it at least PullBatch × the
	// group's members, or members wait for each other.
	MaxAckPending int
	// PullBatch caps what one member fetches ahead of its handler (JetStream's
	// PullMaxMessages; it refetches when half is used). Default 16, against the jetstream
	// library's 500: a member holds these messages from the rest of its group while it
	// works, and hands back those it has not started when it stops.
	PullBatch int
}

// Broker implements mq.Broker over JetStream. streams caches the streams it has made sure
// exist; mu guards it.
type Broker struct {
	js   jetstream.JetStream
	opts Options

	mu      sync.Mutex
	streams map[string]bool
}

// New returns a Broker on a connected client. The caller keeps ownership of nc.
func New(nc *nats.Conn, opts Options) (*Broker, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsjs: %w", err)
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	if opts.MaxAckPending <= 0 {
		opts.MaxAckPending = 256
	}
	if opts.PullBatch <= 0 {
		opts.PullBatch = 16
	}
	return &Broker{js: js, opts: opts, streams: map[string]bool{}}, nil
}

// streamName turns a subject into a valid stream name.
func streamName(topic string) string {
	return strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_").Replace(topic)
}

func (b *Broker) ensureStream(ctx context.Context, topic string) (string, error) {
	name := streamName(topic)
	b.mu.Lock()
	ok := b.streams[name]
	b.mu.Unlock()
	if ok {
		return name, nil
	}
	if _, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{topic}}); err != nil {
		return "", fmt.Errorf("natsjs: stream for %q: %w", topic, err)
	}
	b.mu.Lock()
	b.streams[name] = true
	b.mu.Unlock()
	return name, nil
}

// Publish implements mq.Broker: it returns once JetStream has stored the message.
func (b *Broker) Publish(ctx context.Context, topic string, m mq.Message) error {
	if _, err := b.ensureStream(ctx, topic); err != nil {
		return err
	}
	msg := &nats.Msg{Subject: topic, Data: m.Value, Header: nats.Header{}}
	for k, v := range m.Headers {
		msg.Header.Set(k, v)
	}
	if len(m.Key) > 0 {
		msg.Header.Set("x-key", string(m.Key))
	}
	if _, err := b.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("natsjs: publish to %q: %w", topic, err)
	}
	return nil
}

// Subscribe implements mq.Broker with a durable pull consumer named group, fetching up to
// Options.PullBatch messages ahead of the handler. Once Stop began, a fetched message whose
// handling has not started is handed back with a NAK without delay, so that another member
// of the group (of the other color, after a drain) gets it at once.
func (b *Broker) Subscribe(ctx context.Context, topic, group string, fn func(context.Context, mq.Message) error) (mq.Subscription, error) {
	stream, err := b.ensureStream(ctx, topic)
	if err != nil {
		return nil, err
	}
	cons, err := b.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: group, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait: b.opts.AckWait, MaxAckPending: b.opts.MaxAckPending,
	})
	if err != nil {
		return nil, fmt.Errorf("natsjs: consumer %q on %q: %w", group, topic, err)
	}
	hctx, cancel := context.WithCancel(context.Background())
	s := &subscription{cancel: cancel}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if s.stopping.Load() {
			_ = msg.Nak() // not started: back to the group now, not after AckWait
			return
		}
		m := mq.Message{Topic: topic, Value: msg.Data(), Headers: map[string]string{}}
		for k, v := range msg.Headers() {
			if len(v) > 0 {
				m.Headers[strings.ToLower(k)] = v[0]
			}
		}
		if k, ok := m.Headers["x-key"]; ok {
			m.Key = []byte(k)
			delete(m.Headers, "x-key")
		}
		if md, err := msg.Metadata(); err == nil {
			m.Delivery = int(md.NumDelivered)
		}
		if err := fn(hctx, m); err != nil {
			_ = msg.Nak()
			return
		}
		// Wait for the server to record the ack, so a stopping member does not leave it to
		// AckWait and a redelivery elsewhere.
		actx, acancel := context.WithTimeout(hctx, 5*time.Second)
		_ = msg.DoubleAck(actx)
		acancel()
	}, jetstream.PullMaxMessages(b.opts.PullBatch),
		// A pull request lost to a server restart is noticed by its missing heartbeats (2 of
		// them) and sent again: within 2 s rather than the library's default 30 s.
		jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("natsjs: consume %q on %q: %w", group, topic, err)
	}
	s.cc = cc
	return s, nil
}

// subscription is one member. stopping, set by Stop, makes the callback hand back what it
// has not started; cancel ends the handler's ctx.
type subscription struct {
	cc       jetstream.ConsumeContext
	stopping atomic.Bool
	cancel   context.CancelFunc
}

// Stop implements mq.Subscription's contract (see package mq): it stops fetching, hands
// back (NAK) the fetched messages not started, and lets the call in progress finish and be
// acknowledged. If ctx ends first, it cancels the call's ctx and returns ctx's error; the
// consume goroutines end as soon as the handler returns.
func (s *subscription) Stop(ctx context.Context) error {
	s.stopping.Store(true)
	s.cc.Drain() // the buffer and what the server still sends go through the callback: NAK
	defer s.cancel()
	select {
	case <-s.cc.Closed():
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("natsjs: stop: the handler call in progress did not finish before Stop's ctx ended; its ctx is cancelled and its message will be delivered again"), ctx.Err())
	}
}
