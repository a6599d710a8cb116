package deploy

import "sync/atomic"

// Drain is which colors of an app are drained: all their new work (RPCs, messages, job runs)
// goes to the other color.
type Drain struct {
	Blue, Green bool
}

// Of reports whether c is drained. None never is.
func (d Drain) Of(c Color) bool {
	switch c {
	case Blue:
		return d.Blue
	case Green:
		return d.Green
	}
	return false
}

// Drains is what a component that must leave a drained color (an mq consumer, a job
// executor) needs to know of the release: its instance's color, which colors of its app are
// drained now, and when that changes. lifecycle's Instance implements it from the app's rule.
type Drains interface {
	// Color is the instance's own color.
	Color() Color
	// Drained returns the drains now and a channel that is closed at their next change. Read
	// the state again after the channel closes: changes in between are not queued.
	Drained() (Drain, <-chan struct{})
}

// ManualDrains is Drains set by hand: for a component run without lifecycle (drains driven by
// another control plane) and for tests. Its methods are safe for concurrent use; Drained
// takes no lock.
type ManualDrains struct {
	color Color
	state atomic.Pointer[drainState]
}

type drainState struct {
	d       Drain
	changed chan struct{}
}

// NewManualDrains returns Drains for an instance of color, with nothing drained.
func NewManualDrains(color Color) *ManualDrains {
	m := &ManualDrains{color: color}
	m.state.Store(&drainState{changed: make(chan struct{})})
	return m
}

// Color is the color NewManualDrains was given.
func (m *ManualDrains) Color() Color { return m.color }

// Drained returns the drains now and a channel closed at the next Set that changes them.
func (m *ManualDrains) Drained() (Drain, <-chan struct{}) {
	s := m.state.Load()
	return s.d, s.changed
}

// Set makes d the drains; it tells the waiting readers only if they change.
func (m *ManualDrains) Set(d Drain) {
	next := &drainState{d: d, changed: make(chan struct{})}
	for {
		cur := m.state.Load()
		if cur.d == d {
			return
		}
		if m.state.CompareAndSwap(cur, next) {
			close(cur.changed)
			return
		}
	}
}

// WorkKind is a kind of work a component does besides serving requests.
type WorkKind int

// The kinds of work.
const (
	MessageWork WorkKind = iota // an mq message handled
	JobWork                     // a job item run
	NumWorkKinds
)

// Worker is told of each piece of work a component did, so that the instance's signals show
// it (the dashboard's mq and job work per color). lifecycle's Instance implements it. A
// component reaches it through its Drains: mq and job report to their Drains when it also
// implements Worker, as lifecycle's Instance does, and to nothing otherwise.
type Worker interface {
	DidWork(kind WorkKind, failed bool)
}
