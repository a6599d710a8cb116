package balancer

import (
	"log/slog"

	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc/balancer"
)

// NewWithClock builds the policy as gRPC's Build does, but with clock in place of the real
// one (the warmup factor and the timer that refreshes the picker while an endpoint warms)
// and log in place of slog.Default(). Tests wrap it in a builder of their own to observe the
// pickers it sends and to move its time.
func NewWithClock(cc balancer.ClientConn, opts balancer.BuildOptions, clock clockwork.Clock, log *slog.Logger) balancer.Balancer {
	return newBalancer(cc, opts, clock, log)
}
