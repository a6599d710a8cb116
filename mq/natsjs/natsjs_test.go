package natsjs_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/mqtest"
	"github.com/switchyard-go/switchyard/mq/natsjs"
	"github.com/switchyard-go/switchyard/mq/natsjs/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clients makes a broker client per instance on its own connection, and remembers the
// connections, so that a test can wait until every one has seen the server go.
type clients struct {
	s     *natstest.Server
	mu    sync.Mutex
	conns []*nats.Conn
}

func (c *clients) broker(t testing.TB) mq.Broker {
	nc := c.s.Connect(t)
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.mu.Unlock()
	b, err := natsjs.New(nc, natsjs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// allDisconnected reports whether every connection has lost the server.
func (c *clients) allDisconnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, nc := range c.conns {
		if nc.IsConnected() {
			return false
		}
	}
	return true
}

// settled is mqtest's Settled check for JetStream: a durable consumer with nothing pending
// and nothing awaiting acknowledgement will deliver nothing again. JetStream hands a group's
// messages to its members concurrently and redelivers after AckWait, so this, not the order
// of the stream, is what shows that no late duplicate can come.
func settled(t *testing.T, s *natstest.Server) mqtest.SettledFunc {
	js, err := jetstream.New(s.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, topic string, groups []string) error {
		stream, err := js.StreamNameBySubject(ctx, topic)
		if err != nil {
			return err
		}
		for _, g := range groups {
			c, err := js.Consumer(ctx, stream, g)
			if err != nil {
				return err
			}
			ci, err := c.Info(ctx)
			if err != nil {
				return err
			}
			if ci.NumPending != 0 || ci.NumAckPending != 0 || ci.NumRedelivered != 0 {
				return fmt.Errorf("group %s: %d pending, %d awaiting acknowledgement, %d redelivered", g, ci.NumPending, ci.NumAckPending, ci.NumRedelivered)
			}
		}
		return nil
	}
}

func TestIsolationAcrossADrain(t *testing.T) {
	s := natstest.Start(t)
	c := &clients{s: s}
	mqtest.TestIsolationAcrossADrain(t, c.broker, mqtest.Settled(settled(t, s)))
}

// TestBrokerOutage: the server stops, and comes back once every client has lost its
// connection.
func TestBrokerOutage(t *testing.T) {
	s := natstest.Start(t)
	c := &clients{s: s}
	mqtest.TestBrokerOutage(t, c.broker, func() {
		s.Stop()
		testutil.Eventually(t, "every client disconnected from the stopped server", c.allDisconnected)
	}, func() {
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestStopContract(t *testing.T) {
	s := natstest.Start(t)
	c := &clients{s: s}
	mqtest.TestStopContract(t, c.broker, mqtest.Settled(settled(t, s)))
}
