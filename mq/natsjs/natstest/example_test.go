package natstest_test

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/switchyard-go/switchyard/mq/natsjs/natstest"
)

// A server for a program (outside a test, New and Close; in a test, Start(t) and Connect(t)).
// A client reaches it at URL, which stays the same across Stop and Start.
func Example() {
	s, err := natstest.New()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	if err := nc.Publish("greetings", []byte("hello")); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("connected:", nc.IsConnected(), "flush:", nc.Flush())
	// Output: connected: true flush: <nil>
}
