// Package reach is a process's view of which colors its gRPC clients can reach, per called
// app of a release channel. The switchyard balancer writes it (one Entry per client
// connection); lifecycle reads it to tell whether the instance can keep a request of its
// color on its color all the way down, and marks itself degraded when it cannot
// (DESIGN.md "Faults").
//
// The board is process-wide because the balancer, built by gRPC from a service config, has no
// other way to reach the instance that owns the process. What counts for one instance is
// scoped by use: a connection counts for an instance once a call of its own color (a request
// marked with sticky.Own) went through it; the balancer notes that with Entry.Use. So several
// instances in one process (tests, demos) do not see each other's connections. Several
// connections one instance uses for an app count together: a color serves if it serves
// through any of them.
//
// Lock rule: board.mu guards the views, the users and the change channel; no callback runs
// under it. Entry.Use checks its users without the lock first (an immutable slice swapped
// atomically), so the hot path of a refused call takes no lock once noted.
package reach

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/sticky"
)

// View is what one client connection can reach.
type View struct {
	App     string  // the called app (the target's path)
	Channel string  // the release channel of its endpoints, "" if none
	Serving [2]bool // by sticky.Index: an endpoint of that color can take a request now
}

// Entry is one connection's place on the board.
type Entry struct {
	users atomic.Pointer[[]string] // instances whose own-color calls used it; copy on write under board.mu
}

// Use notes that a call of instance's own color went through this connection: from now on
// the connection counts for that instance (Unserved).
func (e *Entry) Use(instance string) {
	if u := e.users.Load(); u != nil && slices.Contains(*u, instance) {
		return
	}
	board.mu.Lock()
	defer board.mu.Unlock()
	var next []string
	if u := e.users.Load(); u != nil {
		if slices.Contains(*u, instance) {
			return
		}
		next = slices.Clone(*u)
	}
	next = append(next, instance)
	e.users.Store(&next)
	if _, ok := board.views[e]; ok {
		notifyLocked()
	}
}

func (e *Entry) usedBy(instance string) bool {
	u := e.users.Load()
	return u != nil && slices.Contains(*u, instance)
}

var board = struct {
	mu      sync.Mutex
	views   map[*Entry]View
	changed chan struct{}
}{views: map[*Entry]View{}, changed: make(chan struct{})}

// Set publishes e's view; a change wakes Changed's waiters.
func (e *Entry) Set(v View) {
	board.mu.Lock()
	defer board.mu.Unlock()
	if old, ok := board.views[e]; ok && old == v {
		return
	}
	board.views[e] = v
	notifyLocked()
}

// Close takes e off the board.
func (e *Entry) Close() {
	board.mu.Lock()
	defer board.mu.Unlock()
	if _, ok := board.views[e]; !ok {
		return
	}
	delete(board.views, e)
	notifyLocked()
}

func notifyLocked() {
	close(board.changed)
	board.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of the board.
func Changed() <-chan struct{} {
	board.mu.Lock()
	defer board.mu.Unlock()
	return board.changed
}

// Unserved returns, sorted, the apps of channel that instance calls (through connections its
// own-color calls used, see Entry.Use) and that the color cannot serve while the other color
// can: none of those connections to the app has an endpoint of color that takes requests, and
// one has an endpoint of the other color. An app neither color serves is not listed (nothing
// can keep the chain on either color there).
func Unserved(channel string, color deploy.Color, instance string) []string {
	board.mu.Lock()
	defer board.mu.Unlock()
	type both struct{ own, other bool }
	apps := map[string]both{}
	ci, oi := sticky.Index(color), sticky.Index(color.Other())
	for e, v := range board.views {
		if !e.usedBy(instance) || v.Channel != channel || channel == "" {
			continue
		}
		b := apps[v.App]
		b.own = b.own || v.Serving[ci]
		b.other = b.other || v.Serving[oi]
		apps[v.App] = b
	}
	var out []string
	for app, b := range apps {
		if !b.own && b.other {
			out = append(out, app)
		}
	}
	slices.Sort(out)
	return out
}
