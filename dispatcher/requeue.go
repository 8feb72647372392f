package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
)

// retryAfter reports the pause err asks for: any error in its chain that
// has a method RetryAfter() time.Duration (middleware.RetryAfterError,
// or a type of the caller's) asks for a pause of what it returns, never
// negative.
func retryAfter(err error) (time.Duration, bool) {
	var ra interface{ RetryAfter() time.Duration }
	if !errors.As(err, &ra) {
		return 0, false
	}
	return max(ra.RetryAfter(), 0), true
}

// requeue handles a handler error carrying a retry-after: the key is
// paused in the backend (for every process) and here, and the job goes
// back to the head of its key's queue. It reports whether it did, or the
// error to resolve the job with.
func (s *scheduler[T, R]) requeue(j *job[T, R], err error) (bool, error) {
	if err == nil {
		return false, nil
	}
	delay, ok := retryAfter(err)
	if !ok || s.d.stopped.Load() || j.parent.Err() != nil {
		return false, err
	}
	if j.attempt() > s.d.cfg.maxRequeues {
		return false, fmt.Errorf("%w (%d): %w", ErrTooManyRequeues, s.d.cfg.maxRequeues, err)
	}
	if delay > 0 {
		// The local pause below holds this process even if this fails.
		_ = s.backend.Pause(s.d.base, j.info.Key, min(delay, bucket.MaxDuration))
	}
	until := s.d.now() + int64(delay)
	s.mu.Lock()
	if s.stopped {
		// A hard stop resolved the queues since the check above: queued
		// again, j would wait out the pause before anything resolved it.
		s.mu.Unlock()
		return false, err
	}
	j.slot = 0
	j.runAgain()
	j.queuedAt(s.d.now())
	k := s.key(j.info.Key)
	k.paused = max(k.paused, until)
	s.setBackKey(k)
	if k.stats != nil {
		k.stats.retried.Add(1)
	}
	s.d.stats.retried.Add(1)
	// Its booked jobs must not start during the pause.
	s.d.stats.requeued.Add(int64(k.booked.n))
	refund := s.unbook(k, nil) // j's request was made: its admission stays
	j.setState(queued)
	s.insertJob(k, j)
	s.waiting.Add(1)
	s.idle.Add(1)
	switch k.phase {
	case keyAsking, keyRefunding: // apply and resume check k.paused when they settle
	case keyWaiting:
		s.wait(k, max(k.wakeAt, k.paused))
	default:
		s.wait(k, k.paused)
	}
	if j.watched() {
		// Its run ended the watch on its context: waiting again, it is
		// watched again, so that it does not wait out the pause if its
		// context ends. Under s.mu, as in enqueue: it is still queued.
		j.watch(context.AfterFunc(j.parent, func() { s.cancelWaiting(j) }))
	}
	if !refund.empty() {
		s.d.wg.Add(1)
		go s.giveBack(k, refund, s.hold(k))
	}
	s.mu.Unlock()
	s.signal()
	return true, nil
}
