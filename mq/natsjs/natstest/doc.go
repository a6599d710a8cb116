// Package natstest runs a real nats-server with JetStream in process, for tests and examples
// of code that uses package natsjs: no NATS installation and no network beyond loopback.
// Stop and Start restart it on the same port and store, so clients reconnect to the same URL
// and durable consumers and streams survive, as with a restarted production server.
//
// It lives in the mq/natsjs module, so that only users of that module have nats-server in
// their module graph.
//
//	s := natstest.Start(t)  // closed at t's cleanup
//	nc := s.Connect(t)      // reconnects quickly and forever, closed at cleanup
//	broker, _ := natsjs.New(nc, natsjs.Options{})
package natstest
