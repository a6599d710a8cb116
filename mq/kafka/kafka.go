package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/switchyard-go/switchyard/internal/backoff"
	"github.com/switchyard-go/switchyard/mq"
)

// Broker implements mq.Broker: one producer client, one consumer client per group membership.
type Broker struct {
	seeds    []string
	opts     []kgo.Opt
	producer *kgo.Client
	log      *slog.Logger
}

// New connects a producer to seeds; opts (TLS, SASL, …) apply to every client it makes.
// Close it when done.
func New(seeds []string, opts ...kgo.Opt) (*Broker, error) {
	if len(seeds) == 0 {
		return nil, errors.New("kafka: no seed brokers; pass host:port addresses")
	}
	p, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return &Broker{seeds: seeds, opts: opts, producer: p, log: slog.Default()}, nil
}

// Close closes the producer. Subscriptions are closed by their Stop.
func (b *Broker) Close() { b.producer.Close() }

// Publish implements mq.Broker: it returns once the record is acknowledged.
func (b *Broker) Publish(ctx context.Context, topic string, m mq.Message) error {
	r := &kgo.Record{Topic: topic, Key: m.Key, Value: m.Value}
	for k, v := range m.Headers {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	if err := b.producer.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("kafka: publish to %q: %w", topic, err)
	}
	return nil
}

// Subscribe implements mq.Broker: a consumer in Kafka group `group`, from the earliest offset
// for a new group. A handler error retries the same record with backoff (Kafka keeps order
// per partition) until it succeeds or the subscription stops, uncommitted.
func (b *Broker) Subscribe(ctx context.Context, topic, group string, fn func(context.Context, mq.Message) error) (mq.Subscription, error) {
	s := &subscription{done: make(chan struct{})}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(b.seeds...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(200 * time.Millisecond),
	}, b.opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: consumer %q on %q: %w", group, topic, err)
	}
	s.cl = cl
	var pctx context.Context
	pctx, s.cancel = context.WithCancel(context.Background())
	go s.run(pctx, topic, group, fn, b.log)
	return s, nil
}

type subscription struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *subscription) run(ctx context.Context, topic, group string, fn func(context.Context, mq.Message) error, log *slog.Logger) {
	defer close(s.done)
	for ctx.Err() == nil {
		fetches := s.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			s.cl.AllowRebalance()
			return // a poll cut short by Stop holds nothing handled yet
		}
		fetches.EachError(func(t string, p int32, err error) {
			log.Debug("kafka: fetch error; the client retries", "topic", t, "partition", p, "err", err)
		})
		var handled []*kgo.Record
		fetches.EachRecord(func(r *kgo.Record) {
			if ctx.Err() != nil {
				return
			}
			m := mq.Message{Topic: topic, Key: r.Key, Value: r.Value, Headers: map[string]string{}}
			for _, h := range r.Headers {
				m.Headers[h.Key] = string(h.Value)
			}
			bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
			for ctx.Err() == nil {
				if err := fn(ctx, m); err == nil {
					handled = append(handled, r)
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(bo.Next()):
				}
			}
		})
		if len(handled) > 0 {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := s.cl.CommitRecords(cctx, handled...); err != nil {
				log.Warn("kafka: commit failed; those records may be delivered again", "group", group, "err", err)
			}
			cancel()
		}
		s.cl.AllowRebalance()
	}
}

// Stop ends polling after the records being handled, commits them, leaves the group and
// closes the client.
func (s *subscription) Stop(ctx context.Context) error {
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return errors.Join(errors.New("kafka: stop: records in flight not finished"), ctx.Err())
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := s.cl.LeaveGroupContext(lctx)
	s.cl.Close()
	return err
}
