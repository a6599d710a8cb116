package balancer

import (
	"context"
	"log/slog"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/attributes"

	"github.com/switchyard-go/switchyard/deploy"
)

// meterProviderKey is the key of the meter provider in a resolver.State's Attributes
// (WithMeterProvider).
type meterProviderKey struct{}

// WithMeterProvider returns attrs (nil for none) with mp attached, for a resolver to put in
// the Attributes of the resolver.State it sends: the balancer of that ClientConn then records
// its metrics on mp, from the first state that carries it on (a ClientConn whose resolver
// attaches none records on otel.GetMeterProvider()). registry's resolver attaches
// ResolverConfig.MeterProvider when it is set.
func WithMeterProvider(attrs *attributes.Attributes, mp metric.MeterProvider) *attributes.Attributes {
	return attrs.WithValue(meterProviderKey{}, mp)
}

// meterProviderFrom returns the provider WithMeterProvider attached to attrs, or nil.
func meterProviderFrom(attrs *attributes.Attributes) metric.MeterProvider {
	mp, _ := attrs.Value(meterProviderKey{}).(metric.MeterProvider)
	return mp
}

// pickCell counts the picks of the endpoints of one color in one channel, for
// switchyard.balancer.picks. Pick adds to it (an atomic add: no lock, no allocation); the
// balancer's callback reads it. Cells are made by the balancer under mu and never dropped, so
// the counter stays monotonic when endpoints come and go; there is one per (color, channel)
// seen on the connection: a handful.
type pickCell struct {
	n       atomic.Int64
	color   deploy.Color
	channel string
	attrs   metric.ObserveOption // switchyard.app, switchyard.color, switchyard.channel, built once
	_       [32]byte             // keeps two cells' counters off one cache line
}

// meters are the balancer's instruments on one MeterProvider.
type meters struct {
	mp        metric.MeterProvider
	fallbacks metric.Int64Counter
	refusals  metric.Int64Counter
	offline   metric.Int64Counter
	reg       metric.Registration // the picks callback; nil if it could not be registered
}

// newMeters makes the balancer's instruments on mp and registers the callback that reports
// the pick cells (cells is read at each collection). An instrument mp refuses is a no-op,
// and logged.
func newMeters(mp metric.MeterProvider, cells *atomic.Pointer[[]*pickCell], log *slog.Logger) *meters {
	meter := mp.Meter(meterName)
	m := &meters{mp: mp}
	counter := func(name, desc, unit string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		if err != nil {
			log.Warn("switchyard balancer: cannot create metric; it is not recorded", "metric", name, "err", err)
			return noop.Int64Counter{}
		}
		return c
	}
	m.fallbacks = counter("switchyard.balancer.sticky_fallbacks",
		"Sticky requests sent to the other color, and re-decided for it, because the decided color had no usable endpoint and the caller is not of that color.",
		"{request}")
	m.refusals = counter("switchyard.balancer.sticky_refusals",
		"Sticky requests failed (UNAVAILABLE) rather than sent to the other color, because the decided color had no usable endpoint and the caller is code of that color.",
		"{request}")
	m.offline = counter("switchyard.balancer.offline_marks",
		"Endpoints taken out of the picker because a response said the instance is going offline (x-switchyard-offline: 1).",
		"{mark}")
	picks, err := meter.Int64ObservableCounter("switchyard.balancer.picks",
		metric.WithDescription("Requests sent to an endpoint, by the called app and the picked endpoint's color and release channel."),
		metric.WithUnit("{pick}"))
	if err != nil {
		log.Warn("switchyard balancer: cannot create metric; it is not recorded", "metric", "switchyard.balancer.picks", "err", err)
		return m
	}
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if cs := cells.Load(); cs != nil {
			for _, c := range *cs {
				o.ObserveInt64(picks, c.n.Load(), c.attrs)
			}
		}
		return nil
	}, picks)
	if err != nil {
		log.Warn("switchyard balancer: cannot register the picks callback; picks are not recorded", "err", err)
		m.reg = nil
	}
	return m
}

// close unregisters the picks callback: a closed balancer leaves nothing behind in the
// provider.
func (m *meters) close(log *slog.Logger) {
	if m == nil || m.reg == nil {
		return
	}
	if err := m.reg.Unregister(); err != nil {
		log.Warn("switchyard balancer: cannot unregister the picks callback", "err", err)
	}
	m.reg = nil
}

// useMeterProviderLocked makes mp (nil: keep the current provider, or take
// otel.GetMeterProvider() if there is none yet) the balancer's meter provider from now on:
// the next picker and offline mark record on it, and the picks are reported to it (and no
// longer to the previous one). Needs mu. It calls into the provider under mu; the picks
// callback takes no lock of the balancer, so no lock order is at stake.
func (b *wBalancer) useMeterProviderLocked(mp metric.MeterProvider) {
	switch {
	case mp == nil && b.m != nil:
		return
	case mp == nil:
		mp = otel.GetMeterProvider()
	case b.m != nil && b.m.mp == mp:
		return
	}
	b.m.close(b.log)
	b.m = newMeters(mp, &b.cells, b.log)
}

// cellLocked returns the pick cell of color and channel, making it if it is the first
// endpoint of them. Needs mu.
func (b *wBalancer) cellLocked(color deploy.Color, channel string) *pickCell {
	cs := b.cells.Load()
	if cs != nil {
		for _, c := range *cs {
			if c.color == color && c.channel == channel {
				return c
			}
		}
	}
	c := &pickCell{color: color, channel: channel, attrs: metric.WithAttributeSet(attribute.NewSet(
		attribute.String("switchyard.app", b.app),
		attribute.String("switchyard.color", string(color)),
		attribute.String("switchyard.channel", channel)))}
	var next []*pickCell
	if cs != nil {
		next = append(next, *cs...)
	}
	next = append(next, c)
	b.cells.Store(&next) // copy on write: the callback reads the slice without a lock
	return c
}
