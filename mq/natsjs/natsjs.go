package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	// MaxAckPending caps unacknowledged messages per group. Default 1,000.
	MaxAckPending int
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
		opts.MaxAckPending = 1000
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

// Subscribe implements mq.Broker with a durable pull consumer named group.
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
	cc, err := cons.Consume(func(msg jetstream.Msg) {
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
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("natsjs: consume %q on %q: %w", group, topic, err)
	}
	return &subscription{cc: cc, cancel: cancel}, nil
}

type subscription struct {
	cc     jetstream.ConsumeContext
	cancel context.CancelFunc
}

// Stop drains: messages already fetched are handled and acknowledged, then it returns.
func (s *subscription) Stop(ctx context.Context) error {
	s.cc.Drain()
	defer s.cancel()
	select {
	case <-s.cc.Closed():
		return nil
	case <-ctx.Done():
		s.cc.Stop()
		return errors.Join(errors.New("natsjs: stop: messages in flight not finished"), ctx.Err())
	}
}
