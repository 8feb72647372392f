package dispatcher

import (
	"context"
	"errors"
	"runtime/debug"
	"sync/atomic"
)

func (d *Dispatcher[T, R]) work(w int) {
	defer d.workers.Done()
	for j := range d.run { // closed once drained, after the scheduler stopped
		d.runJob(w, j)
	}
}

// A worker's figures and its running job, apart from other workers' on
// cache lines of their own: workers update them for every job.
type worker[T, R any] struct {
	jobCounters
	wait    histogram
	current atomic.Pointer[job[T, R]]
	ran     uint64 // jobs taken, by this worker only
	_       [48]byte
}

func (d *Dispatcher[T, R]) runJob(w int, j *job[T, R]) {
	wk := &d.crew[w]
	wk.ran++
	// A sample of jobs is enough for the moving averages, once they have
	// begun; it spares the workers' cores from passing their lines around.
	sample := wk.ran%8 == 0 || wk.ran < 8
	start := d.now()
	if d.sched == nil {
		if !j.stateCAS(queued, running) {
			return // resolved while queued
		}
	} else {
		if d.sched.late(j, start, sample) {
			return
		}
		d.sched.started()
	}
	j.unwatchCtx()
	if d.stopped.Load() {
		if d.sched != nil {
			d.sched.ranOut(j) // its admission's lease, if any
		}
		d.finish(j, *new(R), ErrClosed, outcomeCancelled)
		d.sched.release()
		return
	}
	wait := int64(j.started(start))
	wk.wait.record(wait)
	if j.stats != nil {
		j.stats.wait.record(wait)
	}
	wk.current.Store(j)
	ctx := j.runContext()
	if d.stopped.Load() { // a hard stop that missed current
		j.endRun()
	}
	val, err := d.call(ctx, j.in)
	ctxEnded := err != nil && ctx.Err() != nil // before the run's end ends it
	if d.sched != nil && sample {
		d.sched.ran(d.now() - start)
	}
	wk.current.Store(nil)
	j.endRun() // the run is over: so is its context
	if d.sched != nil {
		d.sched.ranOut(j)
	}

	if d.sched != nil {
		var requeued bool
		if requeued, err = d.sched.requeue(j, err); requeued {
			return
		}
	}
	o := outcomeSucceeded
	switch {
	case err == nil:
	case ctxEnded && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		o = outcomeCancelled // its context ended under it: the parent's, or a hard stop
	default:
		o = outcomeFailed
	}
	d.finishRun(j, val, err, o, &wk.jobCounters)
	d.sched.release()
}

// call runs the handler, turning a panic into a *PanicError.
func (d *Dispatcher[T, R]) call(ctx context.Context, in T) (val R, err error) {
	defer func() {
		if v := recover(); v != nil {
			var zero R
			val, err = zero, &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return d.handler(ctx, in)
}
