package dispatcher

// SetAfterAdmit installs a hook the scheduler calls after each admission
// batch returns, before acting on it: tests use it to stall the scheduler.
func SetAfterAdmit[T, R any](d *Dispatcher[T, R], f func()) {
	d.sched.mu.Lock()
	d.cfg.afterAdmit = f
	d.sched.mu.Unlock()
}

// SetRequeuing installs a hook a worker calls when it is about to queue
// a job answered retry-after again, before it takes the scheduler's lock.
// Install it before submitting jobs.
func SetRequeuing[T, R any](d *Dispatcher[T, R], f func()) {
	d.sched.mu.Lock()
	d.cfg.requeuing = f
	d.sched.mu.Unlock()
}
