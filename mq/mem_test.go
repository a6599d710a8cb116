package mq_test

import (
	"context"
	"strings"
	"sync"

	"github.com/switchyard-go/switchyard/mq"
)

// memBroker is an in-memory mq.Broker for tests of the group logic: every group gets every
// message, delivered synchronously to one of its members in turn. The real brokers are tested
// in mq/natsjs and mq/kafka. mu guards groups.
type memBroker struct {
	mu     sync.Mutex
	groups map[string][]*memSub // topic/group → members
	next   map[string]int
}

type memSub struct {
	b   *memBroker
	key string
	fn  func(context.Context, mq.Message) error
}

func newMemBroker() *memBroker {
	return &memBroker{groups: map[string][]*memSub{}, next: map[string]int{}}
}

func (b *memBroker) Publish(ctx context.Context, topic string, m mq.Message) error {
	b.mu.Lock()
	var deliver []*memSub
	for key, members := range b.groups {
		if len(members) > 0 && strings.HasPrefix(key, topic+"/") {
			deliver = append(deliver, members[b.next[key]%len(members)])
			b.next[key]++
		}
	}
	b.mu.Unlock()
	m.Topic, m.Delivery = topic, 1
	for _, s := range deliver {
		if err := s.fn(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

func (b *memBroker) Subscribe(_ context.Context, topic, group string, fn func(context.Context, mq.Message) error) (mq.Subscription, error) {
	s := &memSub{b: b, key: topic + "/" + group, fn: fn}
	b.mu.Lock()
	b.groups[s.key] = append(b.groups[s.key], s)
	b.mu.Unlock()
	return s, nil
}

func (s *memSub) Stop(context.Context) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	members := s.b.groups[s.key]
	for i, m := range members {
		if m == s {
			s.b.groups[s.key] = append(members[:i], members[i+1:]...)
			break
		}
	}
	return nil
}
