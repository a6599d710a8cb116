package job

// Kill stops the executor as a crash would: no deregistration, no resignation; its lease
// expires after the TTL.
func (e *Executor) Kill() {
	e.mu.Lock()
	e.started = false
	cancel, sess, claims := e.cancel, e.sess, e.claims
	e.mu.Unlock()
	cancel()
	e.loops.Wait()
	e.runs.Wait()
	sess.Orphan()
	claims.Orphan()
}
