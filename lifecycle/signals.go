package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
)

// meterName is the instrumentation scope of lifecycle's metrics.
const meterName = "github.com/switchyard-go/switchyard/lifecycle"

// The attribute keys of lifecycle's metrics (doc.go "Signals").
const (
	attrApp     = "switchyard.app"
	attrColor   = "switchyard.color"
	attrVersion = "switchyard.version"
	attrChannel = "switchyard.channel"
	attrDecided = "switchyard.decided"
	attrState   = "switchyard.state"
	attrMethod  = "rpc.method"
	attrCode    = "rpc.grpc.status_code"
)

// otherMethod is rpc.method for a request to a method the server did not have registered when
// it began serving (only a grpc.UnknownServiceHandler serves those): method names a client
// chooses must not grow the metric's series without bound (OpenTelemetry's semantic
// conventions use the same value).
const otherMethod = "_OTHER"

// ServerFailure reports whether a request that ended with code failed on the server's side:
// Unknown, DeadlineExceeded, ResourceExhausted, Unimplemented, Internal, Unavailable,
// DataLoss. These are the errors of the instance's window (GET /stats) and so of the
// dashboard's error rate. Codes a client causes (InvalidArgument, NotFound, AlreadyExists,
// PermissionDenied, FailedPrecondition, Aborted, OutOfRange, Unauthenticated, Canceled) are not
// failures of the instance; the metric switchyard.server.requests carries every code.
func ServerFailure(code codes.Code) bool {
	switch code {
	case codes.Unknown, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Unimplemented,
		codes.Internal, codes.Unavailable, codes.DataLoss:
		return true
	}
	return false
}

// codeOf is the status code gRPC sends for a handler's error, as the server derives it (a
// status error's code; a context error's code; Unknown for anything else), without
// allocating for a status error or a context error.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	type grpcStatus interface{ GRPCStatus() *status.Status }
	if gs, ok := err.(grpcStatus); ok {
		if s := gs.GRPCStatus(); s != nil {
			return s.Code()
		}
		return codes.Unknown
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return status.Code(err) // a wrapped status error, or Unknown
}

// numCodes is the number of gRPC status codes (OK to Unauthenticated); a code beyond them
// (a handler may return any) gets its attribute set built per request.
const numCodes = 17

// meters are the instance's instruments, created once by newMeters.
type meters struct {
	requests  metric.Int64Counter
	duration  metric.Float64Histogram
	crossings metric.Int64Counter
	drain     metric.Float64Histogram
	inFlight  metric.Int64ObservableUpDownCounter
	state     metric.Int64ObservableGauge
	reg       metric.Int64ObservableGauge
	meter     metric.Meter
}

// durationBounds are the server duration histogram's bucket bounds, in seconds: those of the
// window (window.Bounds, in ms), so the histogram and the dashboard tell the same story.
var durationBounds = []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5}

func newMeters(mp metric.MeterProvider) (*meters, error) {
	m := &meters{meter: mp.Meter(meterName)}
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var err error
	m.requests, err = m.meter.Int64Counter("switchyard.server.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests the instance served, by app, color, version, channel, method and gRPC status code."))
	add(err)
	m.duration, err = m.meter.Float64Histogram("switchyard.server.duration", metric.WithUnit("s"),
		metric.WithDescription("How long the instance took to serve a request (a stream: its whole life)."),
		metric.WithExplicitBucketBoundaries(durationBounds...))
	add(err)
	m.crossings, err = m.meter.Int64Counter("switchyard.server.crossings", metric.WithUnit("{request}"),
		metric.WithDescription("Requests that reached the instance although their sticky decision for its channel named the other color."))
	add(err)
	m.drain, err = m.meter.Float64Histogram("switchyard.instance.drain.duration", metric.WithUnit("s"),
		metric.WithDescription("How long each drain of the instance took, from its start until quiet (or MaxDrain)."))
	add(err)
	m.inFlight, err = m.meter.Int64ObservableUpDownCounter("switchyard.server.in_flight", metric.WithUnit("{request}"),
		metric.WithDescription("Requests (and streams) the instance is serving now."))
	add(err)
	m.state, err = m.meter.Int64ObservableGauge("switchyard.instance.state",
		metric.WithDescription("1 for the instance's current lifecycle state (switchyard.state), 0 for the others."))
	add(err)
	m.reg, err = m.meter.Int64ObservableGauge("switchyard.instance.registered",
		metric.WithDescription("1 while the instance's record is in etcd (the registrar is registered), else 0."))
	add(err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("lifecycle: create metrics (check Config.MeterProvider): %w", err)
	}
	return m, nil
}

// signals are the attribute sets of the request metrics for one identity of the instance
// (app, color, version, channel), built once: per registered method and status code, as
// ready-made options. The identity's channel follows the rule, so a channel change builds a
// new signals and the gate swaps it in whole; requests use whichever they load.
type signals struct {
	channel  string
	base     []attribute.KeyValue // app, color, version, channel
	methods  map[string]*methodSignals
	other    *methodSignals     // for a method not in methods
	crossing []metric.AddOption // nil unless the instance has a color and a channel
}

// methodSignals are one method's options: requests per status code, and duration. OK's are
// built with the method; another code's on its first request (once: the first to store it
// wins), so a method costs one attribute set per code it has ended with.
type methodSignals struct {
	name     string
	ok       []metric.AddOption
	requests [numCodes]atomic.Pointer[[]metric.AddOption]
	duration []metric.RecordOption
}

// newSignals builds the options for each of methods (full method names) and for otherMethod.
func newSignals(app string, color deploy.Color, version, channel string, methods []string) *signals {
	s := &signals{channel: channel, methods: make(map[string]*methodSignals, len(methods)),
		base: []attribute.KeyValue{attribute.String(attrApp, app), attribute.String(attrColor, string(color)),
			attribute.String(attrVersion, version), attribute.String(attrChannel, channel)}}
	for _, m := range methods {
		s.methods[m] = s.method(m)
	}
	s.other = s.method(otherMethod)
	if color != deploy.None && channel != "" {
		s.crossing = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(attrApp, app),
			attribute.String(attrColor, string(color)), attribute.String(attrChannel, channel),
			attribute.String(attrDecided, string(color.Other()))))}
	}
	return s
}

func (s *signals) method(name string) *methodSignals {
	return &methodSignals{name: name, duration: []metric.RecordOption{metric.WithAttributeSet(s.set(name))},
		ok: s.requestsOf(name, codes.OK)}
}

func (s *signals) requestsOf(method string, code codes.Code) []metric.AddOption {
	return []metric.AddOption{metric.WithAttributeSet(s.set(method, attribute.Int(attrCode, int(code))))}
}

func (s *signals) set(method string, more ...attribute.KeyValue) attribute.Set {
	kvs := append(append(append([]attribute.KeyValue(nil), s.base...), attribute.String(attrMethod, method)), more...)
	return attribute.NewSet(kvs...)
}

// of returns the options of fullMethod.
func (s *signals) of(fullMethod string) *methodSignals {
	if m, ok := s.methods[fullMethod]; ok {
		return m
	}
	return s.other
}

// requestOpts returns the options of a request that ended with code under method m.
func (s *signals) requestOpts(m *methodSignals, code codes.Code) []metric.AddOption {
	switch {
	case code == codes.OK:
		return m.ok
	case code >= numCodes: // not a gRPC code: rare enough to build each time
		return s.requestsOf(m.name, code)
	}
	if p := m.requests[code].Load(); p != nil {
		return *p
	}
	opts := s.requestsOf(m.name, code)
	if !m.requests[code].CompareAndSwap(nil, &opts) {
		return *m.requests[code].Load()
	}
	return opts
}

// methodsOf lists the full method names of srv's registered services ("/pkg.Service/Method").
func methodsOf(srv *grpc.Server) []string {
	var ms []string
	for svc, info := range srv.GetServiceInfo() {
		for _, m := range info.Methods {
			ms = append(ms, "/"+svc+"/"+m.Name)
		}
	}
	return ms
}

// instanceObserver reports the instance's observable metrics (in-flight, state, registered)
// with attribute sets built once.
type instanceObserver struct {
	ident    metric.ObserveOption // app, color
	states   []metric.ObserveOption
	inFlight *atomic.Int64
}

var allStates = []State{StateNew, StateStarting, StateServing, StateDraining, StateDrained, StateStopped}

func newInstanceObserver(app string, color deploy.Color, inFlight *atomic.Int64) *instanceObserver {
	o := &instanceObserver{inFlight: inFlight, ident: metric.WithAttributeSet(attribute.NewSet(
		attribute.String(attrApp, app), attribute.String(attrColor, string(color))))}
	for _, s := range allStates {
		o.states = append(o.states, metric.WithAttributeSet(attribute.NewSet(attribute.String(attrApp, app),
			attribute.String(attrColor, string(color)), attribute.String(attrState, string(s)))))
	}
	return o
}

// observeMetrics registers the callback of the instance's observable metrics; Start calls it
// once, and setState(StateStopped) unregisters it.
func (i *Instance) observeMetrics() error {
	o := newInstanceObserver(i.cfg.App, i.cfg.Color, &i.gate.inflight)
	m := i.gate.m
	reg, err := m.meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		obs.ObserveInt64(m.inFlight, o.inFlight.Load(), o.ident)
		i.mu.Lock()
		st, r := i.state, i.reg
		i.mu.Unlock()
		for k, s := range allStates {
			v := int64(0)
			if s == st {
				v = 1
			}
			obs.ObserveInt64(m.state, v, o.states[k])
		}
		registered := int64(0)
		if r != nil && r.State() == registry.StateRegistered {
			registered = 1
		}
		obs.ObserveInt64(m.reg, registered, o.ident)
		return nil
	}, m.inFlight, m.state, m.reg)
	if err != nil {
		return fmt.Errorf("lifecycle: register the metrics callback (check Config.MeterProvider): %w", err)
	}
	i.mu.Lock()
	i.unobserve = reg
	i.mu.Unlock()
	return nil
}
