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

// KeyCount returns how many keys d's scheduler holds state for.
func KeyCount[T, R any](d *Dispatcher[T, R]) int {
	d.sched.mu.Lock()
	defer d.sched.mu.Unlock()
	return len(d.sched.keys)
}

// RecountWaiting counts, over every key, the jobs Stats.Waiting counts:
// those booked ahead, and those queued in keys that wait.
func RecountWaiting[T, R any](d *Dispatcher[T, R]) int64 {
	s := d.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, k := range s.keys {
		n += int64(k.booked.n)
		if k.phase == keyWaiting {
			n += int64(k.jobs.n)
		}
	}
	return n
}
