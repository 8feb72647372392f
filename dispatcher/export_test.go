package dispatcher

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// SetAfterAdmit makes d's scheduler call f each time its backend has
// decided a batch of admissions, before it acts on them: tests use it to
// stall the scheduler. It wraps the backend the scheduler calls, so that
// no field of the dispatcher exists for tests.
func SetAfterAdmit[T, R any](d *Dispatcher[T, R], f func()) {
	d.sched.mu.Lock()
	d.sched.backend = hooked{Backend: d.sched.backend, afterAdmit: f}
	d.sched.mu.Unlock()
}

// SetRequeuing makes a worker call f when it is about to queue a job
// answered retry-after again, once it has paused the key in the backend
// and before it takes the scheduler's lock. Install it before submitting
// jobs.
func SetRequeuing[T, R any](d *Dispatcher[T, R], f func()) {
	d.sched.mu.Lock()
	d.sched.backend = hooked{Backend: d.sched.backend, afterPause: f}
	d.sched.mu.Unlock()
}

// hooked is a backend that calls its hooks after the calls they follow.
type hooked struct {
	driver.Backend
	afterAdmit func()
	afterPause func()
}

func (h hooked) AdmitBatch(ctx context.Context, batch []driver.Admission) {
	driver.AdmitBatch(ctx, h.Backend, batch)
	if h.afterAdmit != nil {
		h.afterAdmit()
	}
}

func (h hooked) Pause(ctx context.Context, key string, d time.Duration) error {
	err := h.Backend.Pause(ctx, key, d)
	if h.afterPause != nil {
		h.afterPause()
	}
	return err
}
