package natsjs_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/natstest"
	"github.com/switchyard-go/switchyard/mq"
	"github.com/switchyard-go/switchyard/mq/mqtest"
	"github.com/switchyard-go/switchyard/mq/natsjs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func brokers(s *natstest.Server) mqtest.NewBroker {
	return func(t testing.TB) mq.Broker {
		b, err := natsjs.New(s.Connect(t), natsjs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func TestIsolationAcrossADrain(t *testing.T) {
	mqtest.TestIsolationAcrossADrain(t, brokers(natstest.Start(t)))
}

func TestBrokerOutage(t *testing.T) {
	s := natstest.Start(t)
	mqtest.TestBrokerOutage(t, brokers(s), s.Stop, func() {
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
	})
}
