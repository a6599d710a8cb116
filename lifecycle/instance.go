package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/reach"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
	"github.com/switchyard-go/switchyard/window"
)

// State is where an Instance stands.
type State string

// The states, in order. Draining and Drained can go back to Serving through Online.
const (
	StateNew      State = "new"
	StateStarting State = "starting"
	StateServing  State = "serving"
	StateDraining State = "draining"
	StateDrained  State = "drained"
	StateStopped  State = "stopped"
)

// ErrNotDrained is returned by Online when the instance is not drained.
var ErrNotDrained = errors.New("lifecycle: instance is not drained; only a drained (manually offline) instance can go online")

// ErrDeregistrationPending is wrapped by the error Drain returns when the instance drained
// but etcd had not confirmed the deletion of its record by the drain's end (etcd down, or a
// leader change longer than RequestTimeout). The instance is drained all the same; the
// registrar keeps deleting the record in the background, and Offline's lease revocation
// deletes it too. A caller that only needs the instance out of service may treat it as
// success: errors.Is(err, ErrDeregistrationPending).
var ErrDeregistrationPending = errors.New("lifecycle: drained, but the deregistration is pending: etcd has not confirmed that the record is deleted; it is retried in the background (the offline flag tells callers to stop picking the instance meanwhile)")

// Instance is one running instance of an app: it owns its gRPC server, admin HTTP server,
// registrar and rule client, and runs DESIGN.md "Lifecycle of an instance".
//
// Locking: opMu serializes the transitions (Start, Drain, Online, Offline), which may block on
// etcd and on the drain wait; a concurrent caller waits for the running transition and then
// finds the state it left. mu guards state and the fields after it, briefly. Interceptors
// read only atomics.
type Instance struct {
	cfg    Config
	srv    *grpc.Server
	health *health.Server
	gate   gate
	log    *slog.Logger
	ready  atomic.Bool
	// aborted is set by Abort, before it stops the gRPC server.
	aborted atomic.Bool
	// win is the instance's last minute of signals (GET /stats), fed by the gate and DidWork.
	win *window.Window

	opMu sync.Mutex

	mu        sync.Mutex
	state     State
	addr      string // advertised gRPC address
	adminAddr string
	lis       net.Listener
	admin     *http.Server
	rules     *traffic.Rules // set once, before loaded is closed: read without mu after <-loaded
	// clientUnary and clientStream are the rule client's interceptors, for the connections
	// of Dial; set with rules.
	clientUnary  grpc.UnaryClientInterceptor
	clientStream grpc.StreamClientInterceptor
	reg          *registry.Registrar
	unsub        func()
	comps        []Component   // Append's, in order; fixed once Start begins
	started      int           // components started
	goingOff     chan struct{} // closed when a drain begins; renewed by Online
	served       chan error    // gRPC Serve's result
	stopErr      error
	blocked      string              // why Start waits, while it does (Status.Blocked)
	reachKick    chan struct{}       // wakes the degraded-mark goroutine at a rule change (cap 1)
	reachStop    func()              // stops that goroutine and waits for it; nil if not running
	unobserve    metric.Registration // the observable metrics' callback, from Start until stopped

	// bg is the ctx of the etcd writes made on the instance's behalf (the rule handler's
	// re-puts); Offline cancels it before it waits for them.
	bg       context.Context
	bgCancel context.CancelFunc

	// drains is what Drained reports once the rules are loaded (Start closes loaded then); it
	// follows the app's rule (onEvent). Safe for concurrent use without mu.
	drains *deploy.ManualDrains
	loaded chan struct{}
}

// New checks cfg and builds the instance and its gRPC server. Register services on Server()
// before Start.
func New(cfg Config) (*Instance, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	i := &Instance{cfg: cfg, health: health.NewServer(), state: StateNew, goingOff: make(chan struct{}),
		reachKick: make(chan struct{}, 1), log: cfg.Logger.With("app", cfg.App, "instance", cfg.ID),
		drains: deploy.NewManualDrains(cfg.Color), loaded: make(chan struct{})}
	i.bg, i.bgCancel = context.WithCancel(context.Background())
	m, err := newMeters(cfg.MeterProvider)
	if err != nil {
		return nil, err
	}
	i.win = window.New(nil)
	i.gate.win, i.gate.m, i.gate.app, i.gate.color, i.gate.version = i.win, m, cfg.App, cfg.Color, cfg.Version
	i.gate.drainOpts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(
		attribute.String(attrApp, cfg.App), attribute.String(attrColor, string(cfg.Color))))}
	i.srv = grpc.NewServer(append(i.gate.serverOptions(), cfg.ServerOptions...)...)
	i.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(i.srv, i.health)
	return i, nil
}

// Server is the instance's gRPC server, with the interceptors for the offline flag,
// in-flight accounting, the request signals (doc.go "Signals"), sticky baggage and the
// own-color mark already installed, and gRPC health registered. Register every service
// before Start: the request metrics' attribute sets are built for the methods registered
// when it begins serving.
func (i *Instance) Server() *grpc.Server { return i.srv }

// Addr is the address registered for consumers (after Start).
func (i *Instance) Addr() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.addr
}

// AdminAddr is the admin HTTP server's address (after Start).
func (i *Instance) AdminAddr() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.adminAddr
}

// State returns the current state.
func (i *Instance) State() State {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.state
}

// GoingOffline is closed when the instance starts to drain. A long-lived stream handler
// selects on it and ends its stream cleanly, so the client resumes on another instance.
func (i *Instance) GoingOffline() <-chan struct{} {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.goingOff
}

func (i *Instance) setState(s State) {
	i.mu.Lock()
	i.state = s
	unobserve := i.unobserve
	if s == StateStopped {
		i.unobserve = nil
	}
	i.mu.Unlock()
	i.log.Info("lifecycle: " + string(s))
	if s == StateStopped && unobserve != nil {
		// The provider keeps no reference to a stopped instance; its last values were observed.
		if err := unobserve.Unregister(); err != nil {
			i.log.Warn("lifecycle: unregister the metrics callback", "err", err)
		}
	}
}

// DidWork counts a piece of work a component of the instance did (an mq message handled, a
// job item run) in the instance's window (GET /stats): it makes the Instance a
// deploy.Worker, so mq and job components given the Instance as their Drains report to it.
func (i *Instance) DidWork(kind deploy.WorkKind, failed bool) { i.win.DidWork(kind, failed) }

// Start runs the lossless start: listen and serve → admin HTTP (probes answer "not ready")
// → load the rules → wait until the app's channel can be read → readiness checks →
// RegisterDelay → register with start_time, warmup and the traffic weight of the app's
// channel → start components → gRPC health SERVING and the readiness probe 200. A failure at
// any step stops what started, in reverse, and returns the errors joined.
//
// While a rule key that may decide the app's traffic exists but cannot be read
// (traffic.Rules.UnreadableFor), Start does not register: it logs an Error naming the key
// and what to do at every change of the rules and every RuleRetryLog, reports the reason in
// Status.Blocked and the readiness probe's body, and goes on once the key is repaired or
// deleted; when StartTimeout passes first it fails with an error naming the key.
//
// While etcd does not answer (ErrEtcdUnavailable), Start tries the step again (loading the
// rules, registering), an attempt per RequestTimeout at most, logging a warning per attempt,
// until StartTimeout; then it fails with the last error.
func (i *Instance) Start(ctx context.Context) error {
	i.opMu.Lock()
	defer i.opMu.Unlock()
	if i.aborted.Load() {
		i.abortLocked()
		return errors.New("lifecycle: Start on an aborted instance; build a new Instance with New")
	}
	if s := i.State(); s != StateNew {
		return fmt.Errorf("lifecycle: Start on an instance that is %s; an Instance starts once", s)
	}
	if err := i.observeMetrics(); err != nil {
		i.setState(StateStopped)
		return err
	}
	i.setState(StateStarting)
	ctx, cancel := context.WithTimeout(ctx, i.cfg.StartTimeout)
	defer cancel()
	var undo undoStack
	for _, step := range []startStep{
		i.listenAndServe,  // gRPC serves (health NOT_SERVING)
		i.startAdmin,      // the probes answer "not ready"
		i.loadRules,       // the rules, readable for the app's channel; Drained reports them
		i.followRules,     // the registrar, its record carrying the channel's traffic weight
		i.register,        // readiness checks → RegisterDelay → the record in etcd
		i.startComponents, // in order
		i.markServing,     // gRPC health SERVING, /healthz/ready 200
	} {
		if err := step(ctx, &undo); err != nil {
			err = undo.run(err)
			i.setState(StateStopped)
			return err
		}
	}
	return nil
}

// startStep is one step of Start: it does its part and pushes onto undo what stops it, for
// a later step that fails. ctx is Start's, capped by StartTimeout.
type startStep func(ctx context.Context, undo *undoStack) error

// undoStack is what a failing Start stops, the last pushed first.
type undoStack []func(context.Context) error

func (u *undoStack) push(f func(context.Context) error) { *u = append(*u, f) }

// run stops everything pushed, last first, and returns err joined with their errors.
func (u undoStack) run(err error) error {
	errs := []error{err}
	for k := len(u) - 1; k >= 0; k-- {
		errs = append(errs, u[k](context.Background()))
	}
	return errors.Join(errs...)
}

// listenAndServe listens on ListenAddr and serves gRPC; the address registered is the
// advertised one (Config.AdvertiseAddr).
func (i *Instance) listenAndServe(_ context.Context, undo *undoStack) error {
	lis, err := net.Listen("tcp", i.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("lifecycle: listen for gRPC on %s: %w", i.cfg.ListenAddr, err)
	}
	addr, err := i.cfg.advertise(lis.Addr())
	if err != nil {
		_ = lis.Close()
		return err
	}
	i.gate.serve(methodsOf(i.srv)) // the services are registered by now: Serve refuses more
	served := make(chan error, 1)
	go func() { served <- i.srv.Serve(lis) }()
	i.mu.Lock()
	i.lis, i.addr, i.served = lis, addr, served
	i.mu.Unlock()
	undo.push(func(context.Context) error { i.srv.Stop(); return nil })
	// Nothing is left running if Start fails; the undo steps' etcd requests (deregister,
	// revoke) are bounded by RequestTimeout.
	undo.push(func(context.Context) error { i.bgCancel(); return nil })
	return nil
}

// startAdmin serves the admin HTTP server on AdminAddr.
func (i *Instance) startAdmin(_ context.Context, undo *undoStack) error {
	adminLis, err := net.Listen("tcp", i.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("lifecycle: listen for admin HTTP on %s: %w", i.cfg.AdminAddr, err)
	}
	admin := i.serveAdmin(adminLis)
	i.mu.Lock()
	i.admin, i.adminAddr = admin, adminLis.Addr().String()
	i.mu.Unlock()
	undo.push(func(context.Context) error { return stopAdmin(admin) })
	return nil
}

// loadRules builds the rule client (trying again while etcd does not answer), waits until no
// rule that may decide the app's traffic is unreadable, and then has Drained report the
// rule and closes loaded.
func (i *Instance) loadRules(ctx context.Context, undo *undoStack) error {
	var rules *traffic.Rules
	err := i.untilEtcdAnswers(ctx, "load the traffic rules", func() (err error) {
		rules, err = traffic.NewRules(ctx, traffic.Config{Client: i.cfg.Client, Prefix: i.cfg.Prefix,
			RequestTimeout: i.cfg.RequestTimeout, Logger: i.cfg.Logger})
		return err
	})
	if err != nil {
		return err
	}
	undo.push(func(context.Context) error { rules.Close(); return nil })
	if err := i.awaitReadableRules(ctx, rules); err != nil {
		return err
	}
	i.drains.Set(i.drainOf(rules))
	i.mu.Lock()
	i.rules, i.clientUnary, i.clientStream = rules, rules.UnaryClientInterceptor(), rules.StreamClientInterceptor()
	i.mu.Unlock()
	close(i.loaded) // Drained and the connections of Dial use the rules from now on
	return nil
}

// followRules builds the registrar, its record carrying the channel and traffic weight the
// rule gives the instance, and subscribes onEvent to the rules, which re-puts them.
func (i *Instance) followRules(_ context.Context, undo *undoStack) error {
	i.mu.Lock()
	rules, addr, adminAddr := i.rules, i.addr, i.adminAddr
	i.mu.Unlock()
	channel, tw := i.trafficOf(rules)
	i.gate.follow(channel, i.cfg.App+"/"+i.cfg.ID)
	reg, err := registry.NewRegistrar(registry.Config{
		Client: i.cfg.Client, Prefix: i.cfg.Prefix, TTL: i.cfg.TTL, Logger: i.cfg.Logger,
		Instance: registry.Record{
			ID: i.cfg.ID, App: i.cfg.App, Addr: addr, Color: i.cfg.Color, Version: i.cfg.Version,
			Channel: channel, Weight: i.cfg.Weight, TrafficWeight: tw, Warmup: i.cfg.Warmup, Metadata: i.cfg.Metadata,
			Degraded: i.degradedReason(), Admin: advertisedAdmin(addr, adminAddr),
		},
		Checks: i.cfg.Checks, RegisterDelay: i.cfg.RegisterDelay, CheckTimeout: i.cfg.StartTimeout,
		RequestTimeout: i.cfg.RequestTimeout,
	})
	if err != nil {
		return err
	}
	undo.push(func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, i.cfg.RequestTimeout)
		defer cancel()
		return reg.Close(ctx)
	})
	i.mu.Lock()
	i.reg = reg
	i.mu.Unlock()
	unsub := rules.Subscribe("", i.onEvent)
	undo.push(func(context.Context) error { unsub(); return nil })
	i.mu.Lock()
	i.unsub = unsub
	i.mu.Unlock()
	return nil
}

// register runs the registrar's readiness checks, waits RegisterDelay and writes the record
// (all three again while etcd does not answer), then keeps the record's Degraded in step with
// what the process's connections reach.
func (i *Instance) register(ctx context.Context, undo *undoStack) error {
	i.mu.Lock()
	reg := i.reg
	i.mu.Unlock()
	if err := i.untilEtcdAnswers(ctx, "register", func() error { return reg.Register(ctx) }); err != nil {
		return err
	}
	undo.push(func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, i.cfg.RequestTimeout)
		defer cancel()
		return reg.Deregister(ctx)
	})
	i.startFollowingReach(reg)
	undo.push(func(context.Context) error { i.stopFollowingReach(); return nil })
	return nil
}

// startComponents starts the components in order; a failure stops those that started.
func (i *Instance) startComponents(ctx context.Context, undo *undoStack) error {
	undo.push(i.stopComponents) // stops only those that started
	return i.startComponentsNow(ctx)
}

// markServing sets gRPC health SERVING and the readiness probe 200.
func (i *Instance) markServing(context.Context, *undoStack) error {
	i.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	i.ready.Store(true)
	i.setState(StateServing)
	return nil
}

// untilEtcdAnswers runs step until it succeeds, fails otherwise than for want of etcd, or ctx
// (Start's, capped by StartTimeout) ends: an attempt no more often than every RequestTimeout
// (an attempt while etcd is down lasts that long), each failed one logged. Before each attempt
// after the first it resets the etcd connection's reconnect backoff, so the attempt reaches
// etcd if it answers by then, whatever gRPC's backoff has grown to.
func (i *Instance) untilEtcdAnswers(ctx context.Context, what string, step func() error) error {
	begin := time.Now()
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	var unavailable error // the last attempt's, while etcd did not answer
	gaveUp := func(attempt int, err error) error {
		if unavailable == nil || !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			return err // not waiting for etcd, or cancelled (a signal)
		}
		return fmt.Errorf("lifecycle: %s: etcd did not answer within StartTimeout (%v, %d attempts); check that etcd runs and that Config.Client's endpoints reach it: %w",
			what, i.cfg.StartTimeout, attempt, unavailable)
	}
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			if conn := i.cfg.Client.ActiveConnection(); conn != nil {
				conn.ResetConnectBackoff()
			}
		}
		began := time.Now()
		err := step()
		switch {
		case err == nil:
			if attempt > 1 {
				i.log.Info("lifecycle: etcd answers; starting", "step", what, "attempts", attempt, "waited", time.Since(begin).Round(time.Millisecond))
			}
			return nil
		case ctx.Err() != nil:
			return gaveUp(attempt, err)
		case !errors.Is(err, registry.ErrEtcdUnavailable):
			return err
		}
		unavailable = err
		i.log.Warn("lifecycle: etcd did not answer; trying again until StartTimeout", "step", what, "attempt", attempt,
			"waited", time.Since(begin).Round(time.Millisecond), "start_timeout", i.cfg.StartTimeout, "err", err)
		wait := i.cfg.RequestTimeout - time.Since(began)
		if wait <= 0 {
			continue
		}
		if t == nil {
			t = time.NewTimer(wait)
		} else {
			t.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return gaveUp(attempt, ctx.Err())
		case <-t.C:
		}
	}
}

// RuleRetryLog is how often a Start that waits for an unreadable rule logs again when nothing
// changes; every change of the rules is also logged.
const RuleRetryLog = 10 * time.Second

// awaitReadableRules returns once no rule key that may decide the app's traffic is unreadable
// (without a last good version), following the rule client's watch; or fails when ctx ends.
// An instance that cannot read its channel's rule does not know whether its color is drained,
// so it must not register (at full weight, with no channel) as if no release were open.
func (i *Instance) awaitReadableRules(ctx context.Context, rules *traffic.Rules) error {
	begin := time.Now()
	var remind *time.Timer
	defer func() {
		if remind != nil {
			remind.Stop()
		}
	}()
	for attempt := 1; ; attempt++ {
		updated := rules.Updated() // before reading, so no change is missed
		bad := rules.UnreadableFor(i.cfg.App)
		if len(bad) == 0 {
			if attempt > 1 {
				i.log.Info("lifecycle: the traffic rules of this app can be read now; starting", "attempts", attempt-1)
			}
			i.setBlocked("")
			return nil
		}
		why := unreadableReason(i.cfg.App, bad)
		i.setBlocked(why)
		keys, errs := make([]string, len(bad)), make([]string, len(bad))
		for k, u := range bad {
			keys[k], errs[k] = u.Key, u.Err.Error()
		}
		i.log.Error("lifecycle: a traffic rule that may decide this app's weight cannot be read; not registering until it can (put a valid record at the key, upgrade this instance if a newer tool wrote it, or delete the key if the channel is gone)",
			"key", keys, "err", errs, "attempt", attempt, "waited", time.Since(begin).Round(time.Millisecond))
		if remind == nil {
			remind = time.NewTimer(RuleRetryLog)
		} else {
			remind.Reset(RuleRetryLog)
		}
		select {
		case <-ctx.Done():
			cause := context.Cause(ctx)
			if errors.Is(cause, context.DeadlineExceeded) {
				cause = fmt.Errorf("StartTimeout (%v) passed", i.cfg.StartTimeout)
			}
			return fmt.Errorf("lifecycle: %s; gave up: %w", why, cause)
		case <-updated:
		case <-remind.C:
		}
	}
}

// unreadableReason says, for an error and Status.Blocked, which rules could not be read and
// what to do.
func unreadableReason(app string, bad []traffic.Unreadable) string {
	var b strings.Builder
	for k, u := range bad {
		if k > 0 {
			b.WriteString("; ")
		}
		names := "names app " + strconv.Quote(app)
		if u.Apps == nil {
			names = "may name app " + strconv.Quote(app) + " (its apps cannot be read either)"
		}
		fmt.Fprintf(&b, "the traffic rule at %s cannot be read (%v) and %s", u.Key, u.Err, names)
	}
	u := bad[0]
	apps := u.Apps
	if apps == nil {
		apps = []string{app}
	}
	example, _ := traffic.Marshal(traffic.Rule{Channel: u.Channel, Apps: apps, Releasing: true, BluePercent: 0})
	fmt.Fprintf(&b, ": without it the instance cannot know whether its color is drained, so it does not register; "+
		"put a valid record at the key with the real state of the release (e.g. etcdctl put %s '%s'), "+
		"upgrade this instance if a newer tool wrote it, or delete the key if the channel is gone", u.Key, example)
	return b.String()
}

func (i *Instance) setBlocked(why string) {
	i.mu.Lock()
	i.blocked = why
	i.mu.Unlock()
}

// trafficOf is the channel and traffic weight the instance's record should carry now.
func (i *Instance) trafficOf(rules *traffic.Rules) (string, float64) {
	r, ok := rules.ChannelOf(i.cfg.App)
	if !ok {
		return "", deploy.DefaultWeight
	}
	return r.Channel, traffic.TrafficWeight(r, i.cfg.Color)
}

// onEvent follows the app's channel: it re-puts channel and traffic_weight when they change,
// and passes the channel's events to components. It runs on the rule client's subscriber
// goroutine, in order.
func (i *Instance) onEvent(e traffic.Event) {
	i.mu.Lock()
	reg, rules, comps := i.reg, i.rules, i.comps[:i.started]
	i.mu.Unlock()
	i.drains.Set(i.drainOf(rules)) // first: the components see a drain before the re-put below
	cur := reg.Record()
	if e.Channel != cur.Channel && !e.Rule.Has(i.cfg.App) {
		return
	}
	channel, tw := i.trafficOf(rules)
	i.gate.follow(channel, i.cfg.App+"/"+i.cfg.ID)
	select { // the rule changed: the degraded mark is computed again
	case i.reachKick <- struct{}{}:
	default:
	}
	if channel != cur.Channel || tw != cur.TrafficWeight {
		ctx, cancel := context.WithTimeout(i.bg, i.cfg.RequestTimeout)
		err := reg.Update(ctx, func(in *registry.Record) { in.Channel, in.TrafficWeight = channel, tw })
		cancel()
		if err != nil {
			i.log.Warn("lifecycle: could not re-put traffic weight; retried in the background", "err", err)
		} else {
			i.log.Info("lifecycle: traffic weight follows the rule", "channel", channel, "traffic_weight", tw)
		}
	}
	for _, c := range comps {
		if h, ok := c.(EventHandler); ok {
			h.HandleEvent(e)
		}
	}
}

// startComponentsNow starts the components in order, counting those that started.
func (i *Instance) startComponentsNow(ctx context.Context) error {
	i.mu.Lock()
	comps := i.comps
	i.mu.Unlock()
	for k, c := range comps {
		if err := c.Start(ctx); err != nil {
			return fmt.Errorf("lifecycle: start component %d (%T): %w", k, c, err)
		}
		i.mu.Lock()
		i.started = k + 1
		i.mu.Unlock()
	}
	return nil
}

// stopComponents stops the started components in reverse, all of them, joining errors.
func (i *Instance) stopComponents(ctx context.Context) error {
	i.mu.Lock()
	comps := i.comps[:i.started]
	i.started = 0
	i.mu.Unlock()
	var errs []error
	for k := len(comps) - 1; k >= 0; k-- {
		if err := comps[k].Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("lifecycle: stop component %d (%T): %w", k, comps[k], err))
		}
	}
	return errors.Join(errs...)
}

// Drain takes the instance out of service without stopping it — what POST /offline and a
// Kubernetes preStop hook do: flag every response offline → start deregistering → gRPC health
// NOT_SERVING and readiness 503 → close GoingOffline → stop components after their in-flight
// work → wait until no request is in flight and none has arrived for QuietPeriod → wait for
// the deregistration. The local steps never wait for etcd: the deregistration runs beside
// them, from right after the flag, and Drain waits for it only once they are done. It lasts
// until etcd confirms the delete or RequestTimeout has passed (its attempts are short at
// first: see registry's doc), and at most until the drain's end. The whole drain takes at
// most MaxDrain (or until ctx ends): the deregistration and the components' Stop get a ctx
// that ends with it. Requests that still arrive are served.
//
// Drain returns nil once the instance is drained and its record deleted. If etcd has not
// confirmed the delete by then, the instance is drained all the same (StateDrained, offline
// flag on, not ready) and Drain returns an error wrapping ErrDeregistrationPending and the
// registrar's last error: the registrar keeps deleting the record in the background until
// etcd answers (Status.Deregistration says "pending", then "done"), and Offline's lease
// revocation deletes it too. A component that fails to stop adds its error. Idempotent:
// concurrent calls wait for the first; a call on a drained instance returns nil, or the
// ErrDeregistrationPending error while the deletion is still pending. Online undoes it.
func (i *Instance) Drain(ctx context.Context) error {
	i.opMu.Lock()
	defer i.opMu.Unlock()
	pending, err := i.drainLocked(ctx)
	return errors.Join(err, pending)
}

// drainLocked drains the instance (Drain's work, under opMu). pending is nil once the
// record is deleted, and wraps ErrDeregistrationPending while etcd has not confirmed it; err
// is any other failure (a component's Stop, a drain while starting).
func (i *Instance) drainLocked(ctx context.Context) (pending, err error) {
	if i.aborted.Load() {
		i.abortLocked()
		return nil, nil
	}
	switch s := i.State(); s {
	case StateDraining, StateDrained:
		return i.deregistrationPending(), nil
	case StateStopped, StateNew:
		return nil, nil
	case StateStarting:
		return nil, errors.New("lifecycle: Drain while starting")
	}
	i.setState(StateDraining)
	begin := time.Now()
	ctx, cancel := context.WithDeadline(ctx, begin.Add(i.cfg.MaxDrain))
	defer cancel()
	// The flag goes on first: every response from now on tells its caller to stop picking
	// this instance, including those served while the deregistration travels through etcd.
	i.gate.offline.Store(true)
	// The deregistration runs beside the local steps, which never wait for etcd: after a
	// leader change, a delete may take several attempts (registry: each attempt is short at
	// first), and an etcd outage takes the whole RequestTimeout.
	dereg := make(chan error, 1)
	go func() { dereg <- i.reg.Deregister(ctx) }()
	i.ready.Store(false)
	i.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	i.mu.Lock()
	close(i.goingOff)
	i.mu.Unlock()
	err = i.stopComponents(ctx)
	i.waitQuiet(ctx, begin)
	quiet := time.Since(begin)
	i.gate.m.drain.Record(ctx, quiet.Seconds(), i.gate.drainOpts...)
	// Deregister returns by ctx's end at the latest.
	if derr := <-dereg; derr != nil {
		pending = fmt.Errorf("%w: %w", ErrDeregistrationPending, derr)
	}
	i.setState(StateDrained)
	took := time.Since(begin).Round(time.Millisecond)
	if pending != nil {
		i.log.Warn("lifecycle: drained; deregistration pending: etcd has not confirmed that the record is deleted; the registrar keeps trying in the background and the offline flag tells callers meanwhile",
			"took", took, "quiet_after", quiet.Round(time.Millisecond), "in_flight", i.gate.inflight.Load(), "err", pending)
	} else {
		i.log.Info("lifecycle: drained", "took", took, "quiet_after", quiet.Round(time.Millisecond), "in_flight", i.gate.inflight.Load())
	}
	return pending, err
}

// deregistrationPending is nil when the registrar's record is deleted (or was never
// written), and an error wrapping ErrDeregistrationPending (and the registrar's last error)
// while the instance is drained and etcd may still hold it.
func (i *Instance) deregistrationPending() error {
	i.mu.Lock()
	reg := i.reg
	i.mu.Unlock()
	if reg == nil {
		return nil
	}
	switch reg.State() {
	case registry.StateUnregistered, registry.StateClosed:
		return nil
	}
	if err := reg.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrDeregistrationPending, err)
	}
	return ErrDeregistrationPending
}

func (i *Instance) waitQuiet(ctx context.Context, begin time.Time) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := begin.Add(i.cfg.MaxDrain)
	for now := time.Now(); now.Before(deadline) && !i.gate.quiet(now, i.cfg.QuietPeriod); now = time.Now() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Online undoes a Drain: registers again, clears the offline flag, restarts components,
// health SERVING and readiness 200. It returns ErrNotDrained unless the instance is drained.
func (i *Instance) Online(ctx context.Context) error {
	i.opMu.Lock()
	defer i.opMu.Unlock()
	if i.aborted.Load() {
		i.abortLocked()
		return fmt.Errorf("%w (it was aborted)", ErrNotDrained)
	}
	if s := i.State(); s != StateDrained {
		return fmt.Errorf("%w (it is %s)", ErrNotDrained, s)
	}
	if err := i.reg.Register(ctx); err != nil {
		return err
	}
	i.mu.Lock()
	i.goingOff = make(chan struct{})
	i.mu.Unlock()
	i.gate.offline.Store(false)
	if err := i.startComponentsNow(ctx); err != nil {
		// Back to drained: flag on, components that started stopped, deregistered.
		i.gate.offline.Store(true)
		i.mu.Lock()
		close(i.goingOff)
		i.mu.Unlock()
		return errors.Join(err, i.stopComponents(ctx), i.reg.Deregister(ctx))
	}
	i.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	i.ready.Store(true)
	i.setState(StateServing)
	return nil
}

// Offline is the whole lossless offline, what SIGTERM triggers: Drain (if not drained yet),
// then gRPC GracefulStop, capped by StopTimeout, then Stop → stop the admin server → revoke
// the lease. It takes at most Config.OfflineTimeout (MaxDrain + StopTimeout + RequestTimeout
// + 1 s), whether etcd answers or not, or less if ctx ends first. Idempotent; concurrent
// calls wait for the first and return its result.
func (i *Instance) Offline(ctx context.Context) error {
	i.opMu.Lock()
	defer i.opMu.Unlock()
	switch {
	case i.State() == StateStopped:
		return i.stopErr
	case i.aborted.Load():
		i.abortLocked()
		return nil
	case i.State() == StateNew:
		i.bgCancel()
		i.setState(StateStopped)
		return nil
	}
	// A deregistration still pending is not Offline's failure: the lease's revocation below
	// deletes the record, and Close's error says if it could not.
	_, err := i.drainLocked(ctx)
	errs := []error{err}

	stopped := make(chan struct{})
	go func() { i.srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(i.cfg.StopTimeout)
	select {
	case <-stopped:
		t.Stop()
	case <-t.C:
		i.log.Warn("lifecycle: GracefulStop did not finish in time; cutting what is left", "stop_timeout", i.cfg.StopTimeout)
		i.srv.Stop()
		<-stopped
	}
	i.mu.Lock()
	admin, unsub, rules, reg := i.admin, i.unsub, i.rules, i.reg
	i.mu.Unlock()
	errs = append(errs, stopAdmin(admin))
	i.bgCancel() // the rule handler's re-puts end now: rules.Close waits for the handler
	i.stopFollowingReach()
	unsub()
	rules.Close()
	cctx, cancel := context.WithTimeout(ctx, i.cfg.RequestTimeout)
	errs = append(errs, reg.Close(cctx))
	cancel()
	i.stopErr = errors.Join(errs...)
	i.setState(StateStopped)
	return i.stopErr
}

// Abort stops the instance at once, as a killed process stops, for tests and fault drills
// (how do consumers and the release cope when an instance dies?): the gRPC server stops
// (grpc.Server.Stop: connections closed, calls in flight fail), the admin server closes, the
// components are stopped with a ctx already cancelled (their in-flight work is cancelled; what
// they hold elsewhere, such as a broker's group membership or an etcd session, is released only
// as far as their Stop does without a deadline left), and the rule client and the instance's
// goroutines end. Nothing goes to etcd or to callers: no offline flag, no drain, no
// deregistration, no lease revocation, GoingOffline stays open. The lease's keepalive stops, so
// the record stays in etcd, and consumers keep it, until the lease expires (Config.TTL), as
// after a crash.
//
// The gRPC server stops before Abort waits for a transition in progress (Start, Drain,
// Online, Offline) to end; the rest follows. Abort on an instance that never started only
// stops it. Abort and Offline after Abort return at once (Offline returns nil); Run returns
// nil. Not for production shutdown: use Offline (or Run), which loses nothing.
func (i *Instance) Abort() {
	i.aborted.Store(true)
	i.srv.Stop()
	i.opMu.Lock()
	defer i.opMu.Unlock()
	i.abortLocked()
}

// abortLocked is Abort's work after the gRPC server stopped, under opMu. A transition that
// takes opMu once aborted is set calls it instead of doing its own work: the one that won
// the race with Abort for opMu must not drain or deregister either.
func (i *Instance) abortLocked() {
	i.srv.Stop()
	switch i.State() {
	case StateStopped:
		return
	case StateNew:
		i.bgCancel()
		i.setState(StateStopped)
		return
	}
	i.ready.Store(false)
	i.mu.Lock()
	admin, unsub, rules, reg := i.admin, i.unsub, i.rules, i.reg
	i.mu.Unlock()
	if err := admin.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		i.log.Warn("lifecycle: abort: close the admin server", "err", err)
	}
	i.bgCancel() // the rule handler's re-puts end now
	i.stopFollowingReach()
	unsub()
	rules.Close()
	cut, cancel := context.WithCancel(context.Background())
	cancel()
	if err := i.stopComponents(cut); err != nil {
		i.log.Warn("lifecycle: abort: stop components", "err", err)
	}
	// With its ctx already cancelled, Close stops the keepalive and sends no revocation (gRPC
	// sends no request on a cancelled ctx): the lease and the record live on until the TTL.
	_ = reg.Close(cut)
	i.setState(StateStopped)
	ttl := i.cfg.TTL
	if ttl <= 0 {
		ttl = registry.DefaultTTL
	}
	i.log.Warn("lifecycle: aborted: stopped at once without draining or deregistering; the record stays until its lease expires", "ttl", ttl)
}

// Run starts the instance, serves until SIGTERM or SIGINT arrives, ctx ends, or the gRPC
// server fails, and then goes offline losslessly. It is the one call a main needs.
func (i *Instance) Run(ctx context.Context) error {
	// Signals are caught from before Start: one that arrives while starting aborts the start.
	sig, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := i.Start(sig); err != nil {
		return err
	}
	i.mu.Lock()
	served := i.served
	i.mu.Unlock()
	var serveErr error
	select {
	case <-sig.Done():
		i.log.Info("lifecycle: shutting down", "cause", context.Cause(sig))
	case serveErr = <-served:
		if i.aborted.Load() {
			serveErr = nil // Abort stopped it; Offline waits for Abort and does nothing more
		} else {
			i.log.Error("lifecycle: gRPC server stopped unexpectedly", "err", serveErr)
		}
	}
	// Offline bounds itself (OfflineTimeout); the ctx is a safety net.
	octx, cancel := context.WithTimeout(context.Background(), i.cfg.OfflineTimeout()+5*time.Second)
	defer cancel()
	return errors.Join(serveErr, i.Offline(octx))
}

// advertisedAdmin is the admin server's address others reach (the record's Admin): the host
// consumers dial for gRPC (addr's) and the admin listener's port; "" if either is unknown.
func advertisedAdmin(addr, adminListen string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	_, port, err := net.SplitHostPort(adminListen)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(host, port)
}

// adminStopTimeout is how long stopAdmin lets requests being answered finish.
const adminStopTimeout = time.Second

// stopAdmin stops the admin HTTP server: requests being answered (the preStop hook's POST
// /offline, a probe) get up to a second to finish, then every connection left is closed.
// Shutdown alone would leave a connection that has not sent its first request (a probe's or
// a hook's fresh connection) open until it is 5 s old, and report that as an error.
func stopAdmin(admin *http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), adminStopTimeout)
	defer cancel()
	if err := admin.Shutdown(ctx); err != nil {
		if err := admin.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("lifecycle: close the admin server: %w", err)
		}
	}
	return nil
}

// degradedReason is what the record's Degraded should say now: while the instance has a color
// and its app is in an open channel, the apps of that channel it calls that its color cannot
// serve while the other color can (reach.Unserved), e.g. "no serving blue instance of
// inventory"; "" otherwise. The instance's own app does not count: its own mark, seen by a
// connection of this process to its app, would otherwise keep it marked.
func (i *Instance) degradedReason() string {
	o := i.gate.own.Load()
	if o == nil {
		return ""
	}
	apps := slices.DeleteFunc(reach.Unserved(o.Channel, o.Color, o.Instance), func(a string) bool { return a == i.cfg.App })
	if len(apps) == 0 {
		return ""
	}
	r := fmt.Sprintf("no serving %s instance of %s", o.Color, strings.Join(apps, ", "))
	if len(r) > registry.MaxDegradedLen { // names are ASCII (deploy.ValidateName)
		r = r[:registry.MaxDegradedLen-3] + "..."
	}
	return r
}

// startFollowingReach starts the goroutine that keeps the record's Degraded in step with
// what the process's connections reach (reach.Changed) and with the rule (reachKick), until
// stopFollowingReach.
func (i *Instance) startFollowingReach(reg *registry.Registrar) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			changed := reach.Changed() // before reading the board, so no change is missed
			i.syncDegraded(ctx, reg)
			select {
			case <-ctx.Done():
				return
			case <-changed:
			case <-i.reachKick:
			}
		}
	}()
	i.mu.Lock()
	i.reachStop = func() { cancel(); <-done }
	i.mu.Unlock()
}

func (i *Instance) stopFollowingReach() {
	i.mu.Lock()
	stop := i.reachStop
	i.reachStop = nil
	i.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// syncDegraded writes the record's Degraded when degradedReason differs from it. The write
// goes through the Registrar, which keeps it and retries in the background if etcd cannot be
// reached, and which, while the instance is drained, keeps it for the next registration.
func (i *Instance) syncDegraded(ctx context.Context, reg *registry.Registrar) {
	want := i.degradedReason()
	cur := reg.Record().Degraded
	if want == cur {
		return
	}
	uctx, cancel := context.WithTimeout(ctx, i.cfg.RequestTimeout)
	err := reg.Update(uctx, func(in *registry.Record) { in.Degraded = want })
	cancel()
	if errors.Is(err, registry.ErrClosed) || ctx.Err() != nil {
		return
	}
	switch {
	case cur == "":
		i.log.Warn("lifecycle: degraded: this instance cannot keep requests of its color on its color downstream; "+
			"consumers send it no request decided for its color until it can (the chain's entry decides the other color for them)",
			"degraded", want)
	case want == "":
		i.log.Info("lifecycle: no longer degraded: every app of the channel it calls has a serving instance of its color again")
	default:
		i.log.Info("lifecycle: still degraded", "degraded", want)
	}
	if err != nil {
		i.log.Warn("lifecycle: could not write the degraded mark; retried in the background", "err", err)
	}
}
