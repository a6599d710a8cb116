package kafka_test

import (
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/kafka"
	"github.com/switchyard-go/switchyard/mq/mqtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var topics = []string{"orders.created", "orders.paid", mqtest.StopTopic, "bench.plain", "bench.colored"}

const partitions = 4

// cluster is kfake (franz-go's in-process Kafka-protocol cluster), or the real cluster named
// by SWITCHYARD_KAFKA_BROKERS (then c is nil). o takes kfake down and tells which group
// members have noticed.
func cluster(t testing.TB) (seeds []string, c *kfake.Cluster, o *outage) {
	t.Helper()
	o = &outage{last: map[string]int16{}}
	if env := os.Getenv("SWITCHYARD_KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ","), nil, o
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		return nil, o.see(req), o.down.Load()
	})
	return c.ListenAddrs(), c, o
}

// outage: while down, kfake refuses every request by closing the client's connection.
// last maps every consumer group member to the kind of its last group request, and refused
// holds the members refused since the outage began; mu guards them and down's changes.
type outage struct {
	down    atomic.Bool
	mu      sync.Mutex
	last    map[string]int16
	refused map[string]bool
}

// see notes the member a group request comes from and returns the error that refuses it
// while down.
func (o *outage) see(req kmsg.Request) error {
	var group, id string
	switch r := req.(type) {
	case *kmsg.HeartbeatRequest:
		group, id = r.Group, r.MemberID
	case *kmsg.JoinGroupRequest:
		group, id = r.Group, r.MemberID
	case *kmsg.SyncGroupRequest:
		group, id = r.Group, r.MemberID
	case *kmsg.OffsetCommitRequest:
		group, id = r.Group, r.MemberID
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	down := o.down.Load()
	if id != "" {
		member := group + "/" + id
		if down {
			o.refused[member] = true
		} else {
			o.last[member] = req.Key()
		}
	}
	if down {
		return errors.New("broker down (test)")
	}
	return nil
}

// begin takes the broker down at a moment when every group is stable: each member's last
// request was a heartbeat, so none has a join or sync waiting in kfake for the others, and
// each will send another request (and have it refused) within a heartbeat interval.
func (o *outage) begin(t testing.TB) {
	testutil.Eventually(t, "every group member heartbeating (the groups stable)", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, k := range o.last {
			if k != kmsg.Heartbeat.Int16() {
				return false
			}
		}
		if len(o.last) == 0 {
			return false
		}
		o.refused = map[string]bool{}
		o.down.Store(true)
		return true
	})
}

// noticed reports whether every member has been refused since the outage began.
func (o *outage) noticed() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for m := range o.last {
		if !o.refused[m] {
			return false
		}
	}
	return true
}

// brokers makes a broker client per instance. Group members heartbeat every 100 ms rather
// than every 3 s (franz-go's default), so that a member learns within 100 ms that a rebalance
// began — when a drained color leaves a group or the other color joins it — instead of
// within 3 s.
func brokers(seeds []string) mqtest.NewBroker {
	return func(t testing.TB) mq.Broker {
		b, err := kafka.New(seeds, kgo.HeartbeatInterval(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
}

// TestMarkersCoverEveryPartition: mqtest's end-of-test markers, published under keys,
// reach every partition of the test topics (franz-go's default partitioner hashes a key
// with Kafka's murmur2), so they are a barrier in every partition.
func TestMarkersCoverEveryPartition(t *testing.T) {
	p := kgo.StickyKeyPartitioner(nil).ForTopic("orders.created")
	hit := map[int]bool{}
	for k := range mqtest.MarkerKeys {
		hit[p.Partition(&kgo.Record{Key: mqtest.MarkerKey(k)}, partitions)] = true
	}
	if len(hit) != partitions {
		t.Fatalf("the markers reach partitions %v of %d", hit, partitions)
	}
}

func TestIsolationAcrossADrain(t *testing.T) {
	seeds, _, _ := cluster(t)
	mqtest.TestIsolationAcrossADrain(t, brokers(seeds))
}

// TestBrokerOutage: once the groups are stable, kfake refuses every request until it has
// refused one from every group member (they heartbeat every 100 ms), then serves again.
func TestBrokerOutage(t *testing.T) {
	seeds, c, o := cluster(t)
	if c == nil {
		t.Skip("a real cluster cannot be taken down from here")
	}
	mqtest.TestBrokerOutage(t, brokers(seeds), func() {
		o.begin(t)
		testutil.Eventually(t, "every group member refused by the broker", o.noticed)
	}, func() { o.down.Store(false) })
}

func TestStopContract(t *testing.T) {
	seeds, _, _ := cluster(t)
	mqtest.TestStopContract(t, brokers(seeds))
}
