package job

import "time"

// Kill stops the executor as a crash would: no deregistration, no resignation; its lease
// expires after the TTL.
func (e *Executor) Kill() {
	e.mu.Lock()
	e.started = false
	cancel, runCancel, sess, claims := e.cancel, e.runCancel, e.sess, e.claims
	e.mu.Unlock()
	cancel()
	e.loops.Wait()
	e.runs.Wait()
	runCancel()
	sess.orphan()
	claims.orphan()
}

// SessionDone is closed when the executor's current session ends (its lease expired or was
// lost while etcd did not answer), so a test can wait for that instead of for its TTL.
func (e *Executor) SessionDone() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sess.done
}

// NoRecheck makes the leader check the assignment only when woken (an executor or the
// assignment changed, or its drains did), so a test shows what wakes it. Before Start.
func (e *Executor) NoRecheck() { e.recheck = time.Hour }
