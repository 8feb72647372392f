package dispatcher

// SetAfterAdmit installs a hook the scheduler calls after each admission
// batch returns, before acting on it: tests use it to stall the scheduler.
func SetAfterAdmit[T, R any](d *Dispatcher[T, R], f func()) {
	d.sched.mu.Lock()
	d.sched.afterAdmit = f
	d.sched.mu.Unlock()
}
