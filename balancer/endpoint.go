package balancer

import (
	"time"

	"google.golang.org/grpc/resolver"

	"github.com/switchyard-go/switchyard/deploy"
)

// EndpointInfo is what the policy knows of one endpoint. The switchyard resolver attaches it
// from the instance record; an endpoint without it counts as colorless, weight 100, no warmup.
type EndpointInfo struct {
	ID            string        // instance id: offline marks are kept per id
	Color         deploy.Color  // blue, green or none
	Channel       string        // the release channel the instance's app is in, or ""
	Weight        float64       // base weight (capacity), 100 = normal
	TrafficWeight float64       // color weight from the channel's rule, 100 = normal
	StartTime     time.Time     // start of the warmup ramp
	Warmup        time.Duration // length of the ramp; 0 = none
	// Epoch identifies the registration (the switchyard resolver sets the etcd create
	// revision of the instance's key): a new registration of the same instance, even with an
	// identical record, has a new Epoch, so it clears an offline mark. 0 = unknown.
	Epoch int64
	// Degraded: the instance says it cannot keep requests of its color on its color further
	// down (registry.Record.Degraded). Requests decided for its color are not sent to it;
	// undecided ones are.
	Degraded bool
}

// Equal compares every field, for gRPC's attributes (so an unchanged record is not a new
// endpoint) and for offline marks (only a different record, or a new registration: another
// Epoch, clears one).
func (e EndpointInfo) Equal(o any) bool {
	p, ok := o.(EndpointInfo)
	return ok && e.ID == p.ID && e.Color == p.Color && e.Channel == p.Channel && e.Weight == p.Weight &&
		e.TrafficWeight == p.TrafficWeight && e.StartTime.Equal(p.StartTime) && e.Warmup == p.Warmup &&
		e.Epoch == p.Epoch && e.Degraded == p.Degraded
}

// sameRecord is Equal without the fields a consumer's rule client may set (Channel,
// TrafficWeight; registry.ResolverConfig.Rules): whether two infos describe the same record
// of the same registration, for offline marks, which only a newer record clears.
func (e EndpointInfo) sameRecord(o EndpointInfo) bool {
	e.Channel, e.TrafficWeight = o.Channel, o.TrafficWeight
	return e.Equal(o)
}

type infoKey struct{}

// SetEndpointInfo returns ep with info attached to its Attributes.
func SetEndpointInfo(ep resolver.Endpoint, info EndpointInfo) resolver.Endpoint {
	ep.Attributes = ep.Attributes.WithValue(infoKey{}, info)
	return ep
}

// EndpointInfoFrom returns the info attached to ep, or the defaults (weight and traffic
// weight 100) and false.
func EndpointInfoFrom(ep resolver.Endpoint) (EndpointInfo, bool) {
	info, ok := ep.Attributes.Value(infoKey{}).(EndpointInfo)
	if !ok {
		return EndpointInfo{Weight: 100, TrafficWeight: 100}, false
	}
	return info, true
}

// minWarmupFactor is where the warmup ramp starts (DESIGN.md: clamp(uptime/warmup, 0.01, 1)).
const minWarmupFactor = 0.01

// WarmupFactor is clamp(uptime/warmup, 0.01, 1) at now; 1 without warmup.
func (e EndpointInfo) WarmupFactor(now time.Time) float64 {
	if e.Warmup <= 0 {
		return 1
	}
	f := float64(now.Sub(e.StartTime)) / float64(e.Warmup)
	return min(max(f, minWarmupFactor), 1)
}

// warming reports whether the ramp is still going at now.
func (e EndpointInfo) warming(now time.Time) bool {
	return e.Warmup > 0 && now.Sub(e.StartTime) < e.Warmup
}

// EffectiveWeight is weight/100 × (traffic_weight if both colors are present, else 100) ×
// the warmup factor (DESIGN.md "The weight formula").
func (e EndpointInfo) EffectiveWeight(bothColors bool, now time.Time) float64 {
	tw := 100.0
	if bothColors {
		tw = e.TrafficWeight
	}
	return e.Weight / 100 * tw * e.WarmupFactor(now)
}
