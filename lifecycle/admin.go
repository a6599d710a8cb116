package lifecycle

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard-go/switchyard/window"
)

// The admin HTTP server's limits. They are constants, not Config fields: they bound what a
// client that reaches the admin port can hold, and no legitimate client (kubelet's probes, a
// preStop hook, an operator's curl) comes near them.
const (
	// AdminReadHeaderTimeout is how long a connection may take to send a request's headers,
	// its first request's included: a connection that opens and sends nothing is closed then.
	AdminReadHeaderTimeout = 5 * time.Second
	// AdminIdleTimeout is how long a keep-alive connection may stay idle between requests
	// before the server closes it. kubelet opens a connection per probe, so this only ends
	// connections that other clients leave open.
	AdminIdleTimeout = 30 * time.Second
	// AdminMaxConns caps the connections the admin server holds at once. When a connection
	// arrives with the cap reached, the connection idle the longest is closed to make room,
	// so a flood of idle keep-alive connections cannot keep the probes out; if none is idle,
	// the new connection waits (unanswered) until one closes.
	AdminMaxConns = 64
)

// adminLimits are the admin server's limits: the constants above, except in tests, which
// shorten them through adminLimitsKnob.
type adminLimits struct {
	readHeader, idle time.Duration
	maxConns         int
	// listening, if set, is handed the admin server's listener (a test waits on its state).
	listening func(*limitListener)
}

// adminLimitsKnob, when set, replaces the admin server's limits for the instances started
// after. Only tests set it.
var adminLimitsKnob atomic.Pointer[adminLimits]

// serveAdmin serves the admin handler on lis within the admin limits (AdminReadHeaderTimeout,
// AdminIdleTimeout, AdminMaxConns) until the returned server is shut down.
func (i *Instance) serveAdmin(lis net.Listener) *http.Server {
	lim := adminLimits{readHeader: AdminReadHeaderTimeout, idle: AdminIdleTimeout, maxConns: AdminMaxConns}
	if k := adminLimitsKnob.Load(); k != nil {
		lim = *k
	}
	ll := newLimitListener(lis, lim.maxConns)
	if lim.listening != nil {
		lim.listening(ll)
	}
	srv := &http.Server{Handler: i.adminHandler(), ReadHeaderTimeout: lim.readHeader, IdleTimeout: lim.idle, ConnState: ll.connState}
	go func() { _ = srv.Serve(ll) }()
	return srv
}

// limitListener holds at most max connections open at once (see AdminMaxConns): Accept
// makes room for a connection beyond the cap by closing the connection idle the longest, or
// waits, without handing it over, until one closes.
type limitListener struct {
	net.Listener
	max       int
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	freed     chan struct{} // a token per connection closed, for an Accept that waits (cap 1)

	mu   sync.Mutex
	open int                      // connections handed out and not yet closed
	idle map[*limitConn]time.Time // those idle between requests (the server's ConnState), since when
}

func newLimitListener(l net.Listener, max int) *limitListener {
	return &limitListener{Listener: l, max: max, done: make(chan struct{}), freed: make(chan struct{}, 1),
		idle: make(map[*limitConn]time.Time)}
}

// Accept waits for a connection and for room for it.
func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		l.mu.Lock()
		if l.open < l.max {
			l.open++
			l.mu.Unlock()
			return &limitConn{Conn: c, l: l}, nil
		}
		oldest := l.idlestLocked()
		if oldest != nil {
			delete(l.idle, oldest)
		}
		l.mu.Unlock()
		if oldest != nil {
			_ = oldest.Close() // frees its place: taken on the next turn
			continue
		}
		select {
		case <-l.freed:
		case <-l.done:
			_ = c.Close()
			return nil, net.ErrClosed
		}
	}
}

func (l *limitListener) idlestLocked() *limitConn {
	var oldest *limitConn
	var since time.Time
	for c, t := range l.idle {
		if oldest == nil || t.Before(since) {
			oldest, since = c, t
		}
	}
	return oldest
}

// connState is the server's ConnState hook: it keeps track of which connections are idle.
func (l *limitListener) connState(c net.Conn, s http.ConnState) {
	lc, ok := c.(*limitConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s == http.StateIdle && !lc.closed {
		l.idle[lc] = time.Now()
		return
	}
	delete(l.idle, lc)
}

// Close stops Accept, a waiting one included, and closes the listener.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its place back when closed, once.
type limitConn struct {
	net.Conn
	l      *limitListener
	closed bool // guarded by l.mu
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	l := c.l
	l.mu.Lock()
	first := !c.closed
	if first {
		c.closed = true
		l.open--
		delete(l.idle, c)
	}
	l.mu.Unlock()
	if first {
		select {
		case l.freed <- struct{}{}:
		default: // a token is already waiting; the waiter re-checks open anyway
		}
	}
	return err
}

// Status is what GET /status returns (as JSON).
type Status struct {
	App           string  `json:"app"`
	ID            string  `json:"id"`
	Addr          string  `json:"addr"`
	State         State   `json:"state"`
	Ready         bool    `json:"ready"`
	Registered    string  `json:"registered"` // the registrar's state
	Offline       bool    `json:"offline"`
	InFlight      int64   `json:"in_flight"`
	Color         string  `json:"color"`
	Channel       string  `json:"channel"`
	Weight        float64 `json:"weight"`
	TrafficWeight float64 `json:"traffic_weight"`
	// Blocked says why Start waits, while it does: a traffic rule that may decide the app's
	// weight cannot be read. Empty otherwise.
	Blocked string `json:"blocked,omitempty"`
	// Degraded says why the instance cannot keep requests of its color on its color
	// downstream, while it cannot (registry.Record.Degraded, as its record carries it):
	// e.g. "no serving blue instance of inventory". Empty otherwise.
	Degraded string `json:"degraded,omitempty"`
	// Deregistration is, while the instance drains or is drained, "done" once etcd has
	// confirmed that its record is deleted and "pending" until then: the registrar keeps
	// deleting it in the background (RegistryError says why it has not yet). Empty otherwise.
	Deregistration string `json:"deregistration,omitempty"`
	// RegistryError is why etcd does not hold what the registrar wants, while it does not
	// (registry.Registrar.Err: the last attempt's error, e.g. "deregistration retried in the
	// background: registry: etcd unavailable; …", or a *registry.DuplicateIDError). Empty
	// while etcd matches.
	RegistryError string `json:"registry_error,omitempty"`
}

// Status reports the instance's state.
func (i *Instance) Status() Status {
	i.mu.Lock()
	reg, st, addr, blocked := i.reg, i.state, i.addr, i.blocked
	i.mu.Unlock()
	s := Status{App: i.cfg.App, ID: i.cfg.ID, Addr: addr, State: st, Ready: i.ready.Load(), Blocked: blocked,
		Offline: i.gate.offline.Load(), InFlight: i.gate.inflight.Load(), Color: string(i.cfg.Color)}
	if reg != nil {
		in := reg.Record()
		s.Registered, s.Channel, s.Weight, s.TrafficWeight = reg.State().String(), in.Channel, in.Weight, in.TrafficWeight
		s.Degraded = in.Degraded
		if err := reg.Err(); err != nil {
			s.RegistryError = err.Error()
		}
		if st == StateDraining || st == StateDrained {
			s.Deregistration = "done"
			if i.deregistrationPending() != nil {
				s.Deregistration = "pending"
				if s.RegistryError != "" {
					s.RegistryError = "deregistration retried in the background: " + s.RegistryError
				}
			}
		}
	}
	return s
}

// Stats is what GET /stats (window.StatsPath) answers: who the instance is, its state, and
// its window of the last minute (requests, errors, latency buckets, crossings, mq and job
// work). Cheap: no etcd request.
func (i *Instance) Stats() window.Stats {
	i.mu.Lock()
	reg, st, addr := i.reg, i.state, i.addr
	i.mu.Unlock()
	s := window.Stats{App: i.cfg.App, ID: i.cfg.ID, Color: string(i.cfg.Color), Version: i.cfg.Version, Addr: addr,
		State: string(st), InFlight: i.gate.inflight.Load(), Window: i.win.Snapshot()}
	if reg != nil {
		s.Channel = reg.Record().Channel
	}
	return s
}

// adminHandler serves the probes and the operator endpoints:
//
//	GET  /healthz/live   200 while the process runs
//	GET  /healthz/ready  200 once registered and serving, 503 otherwise
//	POST /offline        Drain (the preStop hook); 200 with the status when drained, its
//	                     deregistration done or pending
//	POST /online         undo a Drain; 409 if the instance is not drained
//	GET  /status         Status as JSON
//	GET  /stats          Stats as JSON (window.StatsPath)
func (i *Instance) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !i.ready.Load() {
			msg := "not ready: " + string(i.State())
			if b := i.Status().Blocked; b != "" {
				msg += ": " + b
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("POST /offline", i.guard(func(w http.ResponseWriter, r *http.Request) {
		// The drain must finish even if the preStop hook's HTTP client gives up.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), i.cfg.MaxDrain+i.cfg.StopTimeout)
		defer cancel()
		i.opMu.Lock()
		_, err := i.drainLocked(ctx) // a pending deregistration is in the status
		i.opMu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, i.Status())
	}))
	mux.HandleFunc("POST /online", i.guard(func(w http.ResponseWriter, r *http.Request) {
		err := i.Online(r.Context())
		switch {
		case errors.Is(err, ErrNotDrained):
			http.Error(w, err.Error(), http.StatusConflict)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			writeJSON(w, i.Status())
		}
	}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, i.Status()) })
	mux.HandleFunc("GET "+window.StatsPath, func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, i.Stats()) })
	return mux
}

// guard lets a mutating request through only from loopback, or, when AdminToken is set,
// only with "Authorization: Bearer <token>" (from anywhere; the scheme is case-insensitive,
// RFC 7235). Everything else gets 403.
//
// Loopback is not proof that the caller is on the instance's host when a sidecar proxy (a
// service mesh such as Istio or Linkerd) sits in front of the admin port: the proxy forwards
// remote requests from 127.0.0.1 (or 127.0.0.6). AdminToken must be set there.
func (i *Instance) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := i.cfg.AdminToken; tok != "" {
			got, ok := bearerToken(r.Header.Get("Authorization"))
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(tok)) != 1 {
				http.Error(w, "forbidden: send the admin token as 'Authorization: Bearer <token>'", http.StatusForbidden)
				return
			}
		} else if !fromLoopback(r) {
			http.Error(w, "forbidden: only loopback callers may do this; set lifecycle.Config.AdminToken to allow others", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// bearerToken returns the token of an Authorization header value of the Bearer scheme: the
// scheme in any case, then one or more spaces (RFC 7235 credentials), then the token.
func bearerToken(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimLeft(tok, " ")
	return tok, tok != ""
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
