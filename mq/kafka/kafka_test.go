package kafka_test

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/kafka"
	"github.com/switchyard-go/switchyard/mq/mqtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var topics = []string{"orders.created", "orders.paid", "bench.plain", "bench.colored"}

// cluster is kfake (franz-go's in-process Kafka-protocol cluster), or the real cluster named
// by SWITCHYARD_KAFKA_BROKERS. down, when true, makes kfake close every client connection.
func cluster(t testing.TB) (seeds []string, c *kfake.Cluster, down *atomic.Bool) {
	t.Helper()
	down = new(atomic.Bool)
	if env := os.Getenv("SWITCHYARD_KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ","), nil, down
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.Control(func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if down.Load() {
			return nil, errors.New("broker down (test)"), true
		}
		return nil, nil, false
	})
	return c.ListenAddrs(), c, down
}

func brokers(seeds []string) mqtest.NewBroker {
	return func(t testing.TB) mq.Broker {
		b, err := kafka.New(seeds)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
}

func TestIsolationAcrossADrain(t *testing.T) {
	seeds, _, _ := cluster(t)
	mqtest.TestIsolationAcrossADrain(t, brokers(seeds))
}

func TestBrokerOutage(t *testing.T) {
	seeds, c, down := cluster(t)
	if c == nil {
		t.Skip("a real cluster cannot be taken down from here")
	}
	mqtest.TestBrokerOutage(t, brokers(seeds), func() { down.Store(true) }, func() { down.Store(false) })
}
