package dispatcher

import (
	"context"
	"sync"
	"sync/atomic"
)

// A Future is the outcome of one submitted job. It is resolved exactly
// once: with the handler's result, its error, the error of the context the
// job was submitted with, or ErrClosed. Its methods are safe for concurrent
// use.
type Future[R any] struct {
	mu       sync.Mutex
	resolved atomic.Bool
	done     chan struct{} // made on first use: most futures are never waited on by channel
	val      R
	err      error
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Done returns a channel that is closed when the job is resolved.
func (f *Future[R]) Done() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done == nil {
		if f.resolved.Load() {
			return closedChan
		}
		f.done = make(chan struct{})
	}
	return f.done
}

// Wait blocks until the job is resolved or ctx ends, and returns the job's
// result and error, or ctx's error. A ctx ending does not cancel the job.
func (f *Future[R]) Wait(ctx context.Context) (R, error) {
	if f.resolved.Load() {
		return f.val, f.err
	}
	select {
	case <-f.Done():
		return f.val, f.err
	case <-ctx.Done():
		var zero R
		return zero, ctx.Err()
	}
}

// Result returns the job's result and error without blocking, or
// ErrPending while the job is unresolved.
func (f *Future[R]) Result() (R, error) {
	if !f.resolved.Load() {
		var zero R
		return zero, ErrPending
	}
	return f.val, f.err
}

// resolve settles f and reports whether this call did; a second call is a
// no-op that returns false.
func (f *Future[R]) resolve(val R, err error) bool {
	f.mu.Lock()
	if f.resolved.Load() {
		f.mu.Unlock()
		return false
	}
	f.val, f.err = val, err
	f.resolved.Store(true)
	if f.done != nil {
		close(f.done)
	}
	f.mu.Unlock()
	return true
}
