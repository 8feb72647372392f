package dispatcher

import (
	"context"
	"sync"
	"sync/atomic"
)

// take takes a place for a job without a limiter, or reports that the
// queue is full.
func (d *Dispatcher[T, R]) take() bool {
	if d.pending.Add(1) > d.places {
		d.pending.Add(-1) // with intake held: Shutdown cannot be waiting for it
		return false
	}
	return true
}

// waitRoom waits until a place may be free, or ctx ends, or intake closes.
func (d *Dispatcher[T, R]) waitRoom(ctx context.Context) error {
	room := d.room.wait()
	if d.pending.Load() < d.places { // a job resolved before the wait was seen
		return nil
	}
	select {
	case <-room:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-d.closing:
		return ErrClosed
	}
}

// A roomSignal wakes the Submit calls that wait for a place in a full
// queue. They wait on a channel that the next wake closes, made only while
// someone waits, so that freeing a place costs an atomic load when nobody
// does.
type roomSignal struct {
	wanted atomic.Bool // ch is not nil
	mu     sync.Mutex
	ch     chan struct{}
}

// wait returns the channel the next wake closes. The caller then looks at
// the queue again before it waits on it: a place freed before the wait
// was seen woke nobody.
func (r *roomSignal) wait() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ch == nil {
		r.ch = make(chan struct{})
		r.wanted.Store(true)
	}
	return r.ch
}

// wake wakes every call waiting, if any.
func (r *roomSignal) wake() {
	if !r.wanted.Load() {
		return
	}
	r.mu.Lock()
	if r.ch != nil {
		close(r.ch)
		r.ch = nil
		r.wanted.Store(false)
	}
	r.mu.Unlock()
}

// unaccept takes back a job that never entered the queue.
func (d *Dispatcher[T, R]) unaccept() {
	d.stats.submitted.Add(-1)
	d.pending.Add(-1)
	d.room.wake()
}
