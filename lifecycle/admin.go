package lifecycle

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
)

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
	// downstream, while it cannot (registry.Instance.Degraded, as its record carries it):
	// e.g. "no serving blue instance of inventory". Empty otherwise.
	Degraded string `json:"degraded,omitempty"`
}

// Status reports the instance's state.
func (i *Instance) Status() Status {
	i.mu.Lock()
	reg, st, addr, blocked := i.reg, i.state, i.addr, i.blocked
	i.mu.Unlock()
	s := Status{App: i.cfg.App, ID: i.cfg.ID, Addr: addr, State: st, Ready: i.ready.Load(), Blocked: blocked,
		Offline: i.gate.offline.Load(), InFlight: i.gate.inflight.Load(), Color: string(i.cfg.Color)}
	if reg != nil {
		in := reg.Instance()
		s.Registered, s.Channel, s.Weight, s.TrafficWeight = reg.State().String(), in.Channel, in.Weight, in.TrafficWeight
		s.Degraded = in.Degraded
	}
	return s
}

// adminHandler serves the probes and the operator endpoints:
//
//	GET  /healthz/live   200 while the process runs
//	GET  /healthz/ready  200 once registered and serving, 503 otherwise
//	POST /offline        Drain (the preStop hook); 200 when drained
//	POST /online         undo a Drain; 409 if the instance is not drained
//	GET  /status         Status as JSON
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
		if err := i.Drain(ctx); err != nil {
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
	return mux
}

// guard lets a mutating request through only from loopback, or, when AdminToken is set,
// only with "Authorization: Bearer <token>" (from anywhere). Everything else gets 403.
func (i *Instance) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := i.cfg.AdminToken; tok != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
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
