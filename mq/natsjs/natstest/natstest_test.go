package natstest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/mq/natsjs/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A client of a restarted server reconnects to the same URL.
func TestRestartKeepsURL(t *testing.T) {
	s := natstest.Start(t)
	url := s.URL()
	nc := s.Connect(t)
	s.Stop()
	testutil.Eventually(t, "the client noticing the server stopped", func() bool { return !nc.IsConnected() })
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if s.URL() != url {
		t.Fatalf("URL after restart = %s, want %s", s.URL(), url)
	}
	testutil.Eventually(t, "the client reconnected", nc.IsConnected)
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush after reconnect: %v", err)
	}
}
