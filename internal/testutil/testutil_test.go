package testutil_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPollReturnsWhenTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	if err := testutil.Poll(context.Background(), time.Minute, func() bool { return n.Add(1) == 5 }); err != nil {
		t.Fatal(err)
	}
	if got := n.Load(); got != 5 {
		t.Fatalf("cond called %d times, want 5 (Poll returns as soon as it holds)", got)
	}
}

func TestPollGivesUpAtTheDeadline(t *testing.T) {
	err := testutil.Poll(context.Background(), 20*time.Millisecond, func() bool { return false })
	if err == nil {
		t.Fatal("Poll of a condition that never holds returned nil")
	}
}

func TestGreeterOverLoopback(t *testing.T) {
	addr, _ := testutil.ServeGreeter(t, "g-1")
	c := testutil.Greeter(t, addr)
	var reply *greeterpb.HelloReply
	testutil.EventuallyNoError(t, "a greeting", func() error {
		var err error
		reply, err = c.SayHello(context.Background(), &greeterpb.HelloRequest{Name: "x"})
		return err
	})
	if reply.GetInstance() != "g-1" || reply.GetMessage() != "hello x" {
		t.Fatalf("reply %v, want instance g-1 and message %q", reply, "hello x")
	}
	got := testutil.Receive(t, "a value", func() <-chan int { ch := make(chan int, 1); ch <- 7; return ch }())
	if got != 7 {
		t.Fatalf("Receive got %d, want 7", got)
	}
}
