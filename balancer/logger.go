package balancer

import (
	"log/slog"

	"google.golang.org/grpc/attributes"
)

// loggerKey is the key of the logger in a resolver.State's Attributes (WithLogger).
type loggerKey struct{}

// WithLogger returns attrs (nil for none) with l attached, for a resolver to put in the
// Attributes of the resolver.State it sends: the balancer of that ClientConn then logs
// through l, from the first state that carries it on (before that, and on a ClientConn whose
// resolver attaches none, through slog.Default()). registry's resolver attaches
// ResolverConfig.Logger.
func WithLogger(attrs *attributes.Attributes, l *slog.Logger) *attributes.Attributes {
	return attrs.WithValue(loggerKey{}, l)
}

// loggerFrom returns the logger WithLogger attached to attrs, or nil.
func loggerFrom(attrs *attributes.Attributes) *slog.Logger {
	l, _ := attrs.Value(loggerKey{}).(*slog.Logger)
	return l
}

// useLoggerLocked makes l (nil: keep the current one) the balancer's logger from now on:
// the next picker and offline mark log through it. Needs mu.
func (b *wBalancer) useLoggerLocked(l *slog.Logger) {
	if l == nil || l == b.baseLog {
		return
	}
	b.baseLog = l
	b.log = l.With("component", "switchyard-balancer", "target", b.opts.Target.String())
}
