package dispatcher

import (
	"context"

	"golang.org/x/sync/semaphore"
)

// A Result is a job's outcome.
type Result[R any] struct {
	Value R
	Err   error
}

// DoAll submits every job and returns their outcomes in input order. It
// blocks while the queue is full and until every job is resolved; if ctx
// ends, jobs not yet submitted get ctx's error and submitted ones are
// cancelled through their context.
func (d *Dispatcher[T, R]) DoAll(ctx context.Context, jobs []T) []Result[R] {
	out := make([]Result[R], len(jobs))
	futures := make([]*Future[R], len(jobs))
	for i, job := range jobs {
		f, err := d.submit(ctx, job, true)
		if err != nil {
			out[i].Err = err
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f != nil {
			<-f.Done()
			out[i].Value, out[i].Err = f.Result()
		}
	}
	return out
}

// An Outcome is a streamed job with its result.
type Outcome[T, R any] struct {
	Job   T
	Value R
	Err   error
}

// Stream pulls jobs from in, which the caller owns and closes, and sends
// each job's outcome on the returned channel in the order jobs finish.
// Backpressure reaches the producer: Stream stops pulling while the queue
// is full or while the consumer has not taken finished outcomes (at most
// the queue's capacity plus the workers are in flight). When in is closed
// and every outcome delivered, the channel is closed. If ctx ends, Stream
// stops pulling, jobs in flight end with ctx's error (their context is
// ctx), outcomes not yet taken may be dropped, and the channel is closed:
// a consumer that stops reading must cancel ctx. Jobs pulled after the
// dispatcher closed have outcomes with ErrClosed.
func (d *Dispatcher[T, R]) Stream(ctx context.Context, in <-chan T) <-chan Outcome[T, R] {
	window := d.cfg.queue + d.cfg.workers
	out := make(chan Outcome[T, R])
	finished := make(chan Outcome[T, R], window) // never blocks: at most window in flight
	inFlight := semaphore.NewWeighted(int64(window))
	sctx := &streamContext[T, R]{Context: ctx, out: finished}

	go func() { // the puller: owns finished
		defer func() {
			_ = inFlight.Acquire(context.Background(), int64(window)) // every job in flight is delivered
			close(finished)
		}()
		for {
			if inFlight.Acquire(ctx, 1) != nil {
				return
			}
			var (
				job T
				ok  bool
			)
			select {
			case job, ok = <-in:
			case <-ctx.Done():
			}
			if !ok {
				inFlight.Release(1)
				return
			}
			if _, err := d.submit(sctx, job, true); err != nil {
				finished <- Outcome[T, R]{Job: job, Err: err}
			}
		}
	}()

	go func() { // the deliverer: owns out
		defer close(out)
		for o := range finished {
			select {
			case out <- o:
			case <-ctx.Done():
			}
			inFlight.Release(1)
		}
	}()
	return out
}

// A streamContext is the context of a Stream's jobs: it is ctx, and it
// carries where their outcomes go, so that a job needs no field for them.
type streamContext[T, R any] struct {
	context.Context
	out chan<- Outcome[T, R]
}

// finished sends the outcome of j, which has just been resolved.
func (c *streamContext[T, R]) finished(j *job[T, R]) {
	o := Outcome[T, R]{Job: j.in}
	o.Value, o.Err = j.Result()
	c.out <- o
}
