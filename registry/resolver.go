package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	swbalancer "github.com/switchyard-go/switchyard/balancer"
	"github.com/switchyard-go/switchyard/deploy"
)

// defaultServiceConfig is the service config the resolver sends when ResolverConfig has
// none: it selects switchyard's weighted policy (package balancer, linked in by this package).
const defaultServiceConfig = `{` + lbConfig + `}`

// lbConfig chooses the switchyard_weighted policy: the one place it is written.
const lbConfig = `"loadBalancingConfig":[{"` + swbalancer.Name + `":{}}]`

// ResolverConfig configures the resolver builder.
type ResolverConfig struct {
	// Client is the etcd client. Required. The resolver does not close it.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// ServiceConfig is the whole JSON service config sent with every update, replacing the
	// default. Default defaultServiceConfig plus MethodConfig.
	ServiceConfig string
	// MethodConfig is a JSON array of gRPC method configs, merged into the default service
	// config, e.g. a retry policy for methods that are safe to retry (see RetryPolicy).
	// Ignored when ServiceConfig is set. Default none.
	MethodConfig string
	// RequestTimeout caps each list request. Default DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// HoldExpired is how long an instance whose record vanished with its lease stays in the
	// resolver's state as a suspect (see WatcherConfig.HoldExpired), so that a partition
	// from etcd does not take away instances that still serve. Default DefaultHoldExpired
	// (30 s); negative: none.
	HoldExpired time.Duration
	// Logger, default slog.Default(). The balancer of every ClientConn this builder
	// resolves for logs through it too (the resolver attaches it to each state with
	// balancer.WithLogger), with component=switchyard-balancer and the target.
	Logger *slog.Logger
	// MeterProvider, default otel.GetMeterProvider(). The balancer of every ClientConn this
	// builder resolves for records its metrics (switchyard.balancer.*) on it too (the
	// resolver attaches it to each state with balancer.WithMeterProvider).
	MeterProvider metric.MeterProvider
	// Rules, when set, gives every endpoint its release channel and traffic weight
	// (balancer.EndpointInfo.Channel and TrafficWeight) from the app's rule instead of from
	// the instance records, and the resolver pushes a new state as soon as the app's traffic
	// changes, without waiting for the instances to re-put their records. A *traffic.Rules
	// implements it. Default nil: channel and traffic weight come from the records.
	Rules Rules
}

// Rules tells the resolver the traffic split of an app (ResolverConfig.Rules). A
// *traffic.Rules implements it.
type Rules interface {
	// Traffic returns the open release channel app is in and each color's traffic weight
	// under its rule (traffic's W/(100+W) formula already applied); ok is false when app is
	// in no open channel.
	Traffic(app string) (channel string, blue, green float64, ok bool)
	// Updated returns a channel that is closed at the next change of the rules.
	Updated() <-chan struct{}
}

// NewResolverBuilder returns a gRPC resolver builder for switchyard:///<app> targets. Pass it
// to grpc.NewClient with grpc.WithResolvers; it registers nothing globally.
//
// Each ClientConn gets its own Watcher of the app. Every change of the instance set that the
// balancer can see becomes a resolver.State: an Endpoint per instance, with its address and
// its balancer.EndpointInfo (read it with balancer.EndpointInfoFrom). While the resolver has never reached etcd it reports the error to
// gRPC (RPCs fail with it instead of hanging) and keeps retrying; once it has a set it keeps
// it through etcd outages.
func NewResolverBuilder(cfg ResolverConfig) (resolver.Builder, error) {
	if cfg.Client == nil {
		return nil, errors.New("registry: ResolverConfig.Client is nil; pass a connected *clientv3.Client")
	}
	sc, err := serviceConfigOf(cfg.ServiceConfig, cfg.MethodConfig)
	if err != nil {
		return nil, err
	}
	cfg.ServiceConfig = sc
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if err := validatePrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &builder{cfg: cfg}, nil
}

// serviceConfigOf returns the service config resolvers hand gRPC for ResolverConfig's
// ServiceConfig and MethodConfig, checked with gRPC's own parser (the one NewClient applies to
// a default service config), so a mistake is an error here rather than at the first dial.
func serviceConfigOf(serviceConfig, methodConfig string) (string, error) {
	var sc string
	switch {
	case serviceConfig != "" && methodConfig != "":
		return "", errors.New("registry: set ResolverConfig.ServiceConfig or MethodConfig, not both; put the method configs into ServiceConfig")
	case serviceConfig != "":
		if !json.Valid([]byte(serviceConfig)) {
			return "", fmt.Errorf("registry: ResolverConfig.ServiceConfig is not valid JSON: %q", serviceConfig)
		}
		sc = serviceConfig
	case methodConfig != "":
		var mc []json.RawMessage
		if err := json.Unmarshal([]byte(methodConfig), &mc); err != nil {
			return "", fmt.Errorf("registry: ResolverConfig.MethodConfig must be a JSON array of method configs: %w", err)
		}
		sc = `{` + lbConfig + `,"methodConfig":` + methodConfig + `}`
	default:
		return defaultServiceConfig, nil
	}
	// gRPC parses a default service config when the client is created, without connecting.
	cc, err := grpc.NewClient("passthrough:///service-config-check", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		field := "ServiceConfig"
		if methodConfig != "" {
			field = "MethodConfig"
		}
		return "", fmt.Errorf("registry: ResolverConfig.%s rejected by gRPC's service config parser (see https://github.com/grpc/grpc/blob/master/doc/service_config.md): %w", field, err)
	}
	_ = cc.Close()
	return sc, nil
}

type builder struct{ cfg ResolverConfig }

func (b *builder) Scheme() string { return deploy.Scheme }

func (b *builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	app := strings.TrimPrefix(target.Endpoint(), "/")
	if err := validName("app", app); err != nil {
		return nil, fmt.Errorf("registry: target %q: want %s:///<app>: %w", target.URL.String(), deploy.Scheme, err)
	}
	sc := cc.ParseServiceConfig(b.cfg.ServiceConfig)
	if sc.Err != nil {
		return nil, fmt.Errorf("registry: ResolverConfig.ServiceConfig rejected by gRPC: %w", sc.Err)
	}
	r := &etcdResolver{cc: cc, sc: sc, log: b.cfg.Logger.With("app", app), app: app, rules: b.cfg.Rules,
		attrs: swbalancer.WithLogger(nil, b.cfg.Logger)}
	if b.cfg.MeterProvider != nil {
		r.attrs = swbalancer.WithMeterProvider(r.attrs, b.cfg.MeterProvider)
	}
	if r.rules != nil {
		r.traffic = trafficOf(r.rules, app)
	}
	initial := r.traffic // the Watcher's goroutine owns r.traffic from here on
	w, err := newWatcher(WatcherConfig{
		Client:         b.cfg.Client,
		Prefix:         b.cfg.Prefix,
		App:            app,
		RequestTimeout: b.cfg.RequestTimeout,
		HoldExpired:    b.cfg.HoldExpired,
		Logger:         b.cfg.Logger,
		MeterProvider:  b.cfg.MeterProvider,
	}, r.update, time.Duration(resolverCoalesce.Load()), r.rules != nil)
	if err != nil {
		return nil, err
	}
	r.w = w
	if r.rules != nil {
		r.stop, r.rulesDone = make(chan struct{}), make(chan struct{})
		go r.followRules(initial)
	}
	return r, nil
}

// Coalesce is how close watch responses must follow each other for the resolver to hand
// gRPC one state for all of them (kvwatch.Config.Coalesce): a change waits this much longer,
// and a burst (every instance re-putting its record after a shift) is one resolver update and
// one picker rebuild per consumer, taken within at most ten times this.
const Coalesce = 2 * time.Millisecond

// resolverCoalesce is Coalesce, read by every resolver built; a test lengthens it so that a
// loaded machine's scheduling gaps do not split what it sends as one burst.
var resolverCoalesce atomic.Int64

func init() { resolverCoalesce.Store(int64(Coalesce)) }

// etcdResolver feeds one ClientConn. update runs only on the Watcher's goroutine, which owns
// eps, applied and pushed; no lock is needed. followRules only reads the rules and asks the
// Watcher to publish again.
type etcdResolver struct {
	cc    resolver.ClientConn
	sc    *serviceconfig.ParseResult
	attrs *attributes.Attributes // every state's: the balancer's logger and meter provider
	log   *slog.Logger
	w     *Watcher
	app   string
	rules Rules // nil: channel and traffic weight come from the records

	eps     []resolver.Endpoint // the last state's, sorted by instance ID
	refs    []*inst             // the records eps were built from (the Watcher's, read-only)
	traffic appTraffic          // the app's traffic eps were built with (Rules only)
	pushed  bool                // a state has been handed to gRPC

	stop      chan struct{} // closed by Close: followRules returns
	rulesDone chan struct{} // closed when followRules has returned
}

// appTraffic is what Rules say of one app.
type appTraffic struct {
	channel     string
	blue, green float64
	ok          bool
}

func trafficOf(rules Rules, app string) appTraffic {
	ch, blue, green, ok := rules.Traffic(app)
	if !ok {
		return appTraffic{}
	}
	return appTraffic{channel: ch, blue: blue, green: green, ok: true}
}

// of returns the channel and traffic weight the rule gives an instance of color c: its
// color's weight in the open channel, deploy.DefaultWeight when colorless or in no open channel.
func (t appTraffic) of(c deploy.Color) (string, float64) {
	switch {
	case !t.ok:
		return "", deploy.DefaultWeight
	case c == deploy.Blue:
		return t.channel, t.blue
	case c == deploy.Green:
		return t.channel, t.green
	}
	return t.channel, deploy.DefaultWeight
}

// followRules has the Watcher publish again whenever the app's traffic changes, so update
// applies it at once.
func (r *etcdResolver) followRules(last appTraffic) {
	defer close(r.rulesDone)
	for {
		next := r.rules.Updated()
		if t := trafficOf(r.rules, r.app); t != last {
			last = t
			r.w.kv.Republish()
		}
		select {
		case <-next:
		case <-r.stop:
			return
		}
	}
}

// update hands gRPC the instance set as endpoints. An endpoint whose address and
// balancer.EndpointInfo (as the rules give it) are unchanged is reused; when every one is, and
// none came or left, nothing is sent: a record change the balancer cannot see (Version,
// Metadata, or with Rules an instance re-putting the channel and traffic weight the rule
// already gave) costs gRPC nothing.
func (r *etcdResolver) update(s instSet) {
	if s.err != nil {
		r.cc.ReportError(fmt.Errorf("registry: no instances known yet: %w", s.err))
		return
	}
	if r.rules != nil {
		r.traffic = trafficOf(r.rules, r.app)
	}
	eps := make([]resolver.Endpoint, len(s.refs))
	changed := !r.pushed || len(eps) != len(r.eps)
	j := 0
	for i, in := range s.refs {
		// Both are sorted by ID: walk them together.
		for j < len(r.eps) && r.refs[j].ID < in.ID {
			j++
		}
		attrs := in.attrs // the record's info, shared with the Watcher
		var info swbalancer.EndpointInfo
		if r.rules != nil {
			info = in.info()
			if ch, tw := r.traffic.of(info.Color); ch != info.Channel || tw != info.TrafficWeight {
				info.Channel, info.TrafficWeight = ch, tw
				attrs = nil
			}
		}
		if j < len(r.eps) && r.refs[j].ID == in.ID {
			old := r.eps[j]
			if old.Addresses[0].Addr == in.Addr && old.Attributes == attrs {
				eps[i] = old
				continue
			}
			if old.Addresses[0].Addr == in.Addr {
				want := info
				if attrs != nil {
					want = in.info()
				}
				if infoEqual(old, want) { // e.g. a change of Version or Metadata alone
					eps[i] = old
					continue
				}
			}
		}
		if attrs == nil {
			attrs = swbalancer.SetEndpointInfo(resolver.Endpoint{}, info).Attributes
		}
		eps[i], changed = resolver.Endpoint{Addresses: []resolver.Address{{Addr: in.Addr}}, Attributes: attrs}, true
	}
	r.refs = s.refs
	r.eps = eps
	if !changed {
		return
	}
	r.pushed = true
	if err := r.cc.UpdateState(resolver.State{Endpoints: eps, ServiceConfig: r.sc, Attributes: r.attrs}); err != nil {
		// The balancer refused the state (e.g. no endpoints at all). gRPC will ask
		// for a re-resolution; the watch delivers the next change anyway.
		r.log.Debug("registry: gRPC did not accept the instance set", "instances", len(eps), "err", err)
	}
}

// infoEqual reports whether ep carries info.
func infoEqual(ep resolver.Endpoint, info swbalancer.EndpointInfo) bool {
	old, _ := swbalancer.EndpointInfoFrom(ep)
	return old.Equal(info)
}

func (r *etcdResolver) ResolveNow(resolver.ResolveNowOptions) { r.w.Refresh() }

func (r *etcdResolver) Close() {
	if r.stop != nil {
		close(r.stop)
		<-r.rulesDone
	}
	r.w.Close()
}

// RetryPolicy returns a MethodConfig that retries calls of the given fully-qualified services
// (e.g. "order.v1.Order") or methods ("order.v1.Order/Get") up to 3 attempts when they fail
// with UNAVAILABLE, as they do when an instance dies abruptly mid-call. Declare only what is
// safe to run twice.
func RetryPolicy(names ...string) string {
	var sel []string
	for _, n := range names {
		service, method, _ := strings.Cut(n, "/")
		if method == "" {
			sel = append(sel, fmt.Sprintf(`{"service":%q}`, service))
		} else {
			sel = append(sel, fmt.Sprintf(`{"service":%q,"method":%q}`, service, method))
		}
	}
	return `[{"name":[` + strings.Join(sel, ",") + `],"retryPolicy":{"maxAttempts":3,"initialBackoff":"0.01s",` +
		`"maxBackoff":"0.1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]`
}
