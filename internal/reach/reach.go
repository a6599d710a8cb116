// Package reach is a process's view of which colors its gRPC clients can reach, per called
// app of a release channel. The switchyard balancer writes it (one Entry per client
// connection); lifecycle reads it to tell whether the instance can keep a request of its
// color on its color all the way down, and marks itself degraded when it cannot
// (DESIGN.md "Faults").
//
// The view is process-wide because the balancer, built by gRPC from a service config, has no
// other way to reach the instance that owns the process. Several connections to one app
// count together: a color serves if it serves through any of them.
//
// Lock rule: mu guards the entries and the change channel; no callback runs under it.
package reach

import (
	"slices"
	"sync"

	"github.com/switchyard-go/switchyard/internal/sticky"
)

// View is what one client connection can reach.
type View struct {
	App     string  // the called app (the target's path)
	Channel string  // the release channel of its endpoints, "" if none
	Serving [2]bool // by sticky.Index: an endpoint of that color can take a request now
}

// Entry is one connection's place on the board.
type Entry struct{ _ byte } // not zero-sized: distinct entries need distinct addresses

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

// Unserved returns, sorted, the apps of channel that this process calls and that the color
// cannot serve while the other color can: no connection to the app has an endpoint of color
// that takes requests, and some connection has one of the other color. An app neither color
// serves is not listed (nothing can keep the chain on either color there).
func Unserved(channel, color string) []string {
	board.mu.Lock()
	defer board.mu.Unlock()
	type both struct{ own, other bool }
	apps := map[string]both{}
	ci, oi := sticky.Index(color), sticky.Index(sticky.Other(color))
	for _, v := range board.views {
		if v.Channel != channel || channel == "" {
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
