// Package dispatch delivers values to a callback in order, from a goroutine of its own,
// without ever blocking the sender: a slow or stuck callback holds up only its own queue.
// switchyard uses it for every user callback (state changes, rule events).
package dispatch

import "sync"

// Queue is an unbounded FIFO in front of one callback.
//
// mu guards items and state; the callback is never called with mu held.
type Queue[T any] struct {
	fn      func(T)
	onPanic func(v any)

	mu      sync.Mutex
	items   []T
	closing bool // Close: deliver what is queued, then stop
	stopped bool // Stop: drop what is queued
	wake    chan struct{}
	done    chan struct{}
}

// Start runs fn for every pushed value. A panic in fn is recovered and given to onPanic
// (if not nil); delivery goes on with the next value.
func Start[T any](fn func(T), onPanic func(v any)) *Queue[T] {
	q := &Queue[T]{fn: fn, onPanic: onPanic, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go q.run()
	return q
}

// Push queues v. It never blocks; after Close or Stop it does nothing.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closing || q.stopped {
		return
	}
	q.items = append(q.items, v)
	select { // never blocks
	case q.wake <- struct{}{}:
	default:
	}
}

// Close delivers what is queued, stops, and waits for the last callback to return. Do not
// call it from the callback.
func (q *Queue[T]) Close() {
	q.mu.Lock()
	q.closing = true
	q.mu.Unlock()
	q.signal()
	<-q.done
}

// Stop drops what is queued and stops after the running callback, without waiting; Done
// tells when it has. It may be called from the callback.
func (q *Queue[T]) Stop() {
	q.mu.Lock()
	q.stopped, q.items = true, nil
	q.mu.Unlock()
	q.signal()
}

// Done is closed once the goroutine has exited.
func (q *Queue[T]) Done() <-chan struct{} { return q.done }

func (q *Queue[T]) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue[T]) run() {
	defer close(q.done)
	for range q.wake {
		for {
			q.mu.Lock()
			if q.stopped || len(q.items) == 0 {
				exit := q.stopped || q.closing
				q.mu.Unlock()
				if exit {
					return
				}
				break
			}
			v := q.items[0]
			var zero T
			q.items[0] = zero
			q.items = q.items[1:]
			q.mu.Unlock()
			q.call(v)
		}
	}
}

func (q *Queue[T]) call(v T) {
	defer func() {
		if p := recover(); p != nil && q.onPanic != nil {
			q.onPanic(p)
		}
	}()
	q.fn(v)
}
