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
	var pctx, hctx context.Context
	pctx, s.stop = context.WithCancel(context.Background())
	hctx, s.cancelHandler = context.WithCancel(context.Background())
	go s.run(pctx, hctx, topic, group, fn, b.log)
	return s, nil
}

// subscription is one member. run polls and handles until stop is called (pctx ends);
// cancelHandler ends the handler's ctx (hctx), at Stop's deadline at the latest; done
// closes when run returns.
type subscription struct {
	cl            *kgo.Client
	stop          context.CancelFunc
	cancelHandler context.CancelFunc
	done          chan struct{}
}

func (s *subscription) run(pctx, hctx context.Context, topic, group string, fn func(context.Context, mq.Message) error, log *slog.Logger) {
	defer close(s.done)
	for pctx.Err() == nil {
		fetches := s.cl.PollFetches(pctx)
		if pctx.Err() != nil {
			s.cl.AllowRebalance()
			return // a poll cut short by Stop holds nothing handled yet
		}
		fetches.EachError(func(t string, p int32, err error) {
			log.Debug("kafka: fetch error; the client retries", "topic", t, "partition", p, "err", err)
		})
		var handled []*kgo.Record
		fetches.EachRecord(func(r *kgo.Record) {
			if pctx.Err() != nil {
				return // stopping: not started, left uncommitted for the next owner
			}
			m := mq.Message{Topic: topic, Key: r.Key, Value: r.Value, Headers: map[string]string{}}
			for _, h := range r.Headers {
				m.Headers[h.Key] = string(h.Value)
			}
			bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
			for {
				// The call gets hctx, not pctx: Stop lets a call in progress finish.
				if err := fn(hctx, m); err == nil {
					handled = append(handled, r)
					return
				}
				t := time.NewTimer(bo.Next())
				select {
				case <-pctx.Done():
				case <-t.C:
				}
				t.Stop()
				if pctx.Err() != nil {
					return
				}
			}
		})
		if len(handled) > 0 && hctx.Err() == nil {
			// Bounded by Stop's deadline too (hctx), after which the client closes.
			cctx, cancel := context.WithTimeout(hctx, 10*time.Second)
			if err := s.cl.CommitRecords(cctx, handled...); err != nil {
				log.Warn("kafka: commit failed; those records may be delivered again", "group", group, "err", err)
			}
			cancel()
		}
		s.cl.AllowRebalance()
	}
}

// Stop implements mq.Subscription's contract (see package mq): it stops polling, leaves the
// fetched records not started uncommitted for the next owner, lets the call in progress
// finish, commits what was handled, leaves the group and closes the client. If ctx ends
// first, it cancels the call's ctx, starts leaving the group and closing the client (they
// finish in the background within about a second, and run's goroutine ends when the
// handler returns), and returns ctx's error.
func (s *subscription) Stop(ctx context.Context) error {
	s.stop()
	select {
	case <-s.done:
	case <-ctx.Done():
		s.cancelHandler()
		s.cl.AllowRebalance()           // run may still be in the handler; Close must not wait for it
		_ = s.cl.LeaveGroupContext(ctx) // ctx is done: starts the leave without waiting for it
		go s.cl.Close()
		return errors.Join(errors.New("kafka: stop: the handler call in progress did not finish before Stop's ctx ended; its ctx is cancelled and its record will be delivered again"), ctx.Err())
	}
	defer s.cancelHandler()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := s.cl.LeaveGroupContext(lctx)
	s.cl.Close()
	return err
}
