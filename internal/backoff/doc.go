// Package backoff computes jittered exponential retry delays for switchyard's retry loops.
// It never sleeps: callers wait on a timer in a select with their ctx, so no retry ignores
// cancellation.
package backoff
