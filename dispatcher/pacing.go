package dispatcher

import (
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// window is how far ahead jobs are booked: the configured window, or four
// backend round trips if that is more, so that a refused key that asks
// again half a window before its slot is answered in time to book the
// slot itself even on a slow backend.
func (s *scheduler[T, R]) window() time.Duration {
	return max(s.d.cfg.bookAhead, time.Duration(4*s.rtt.Load()))
}

// ran records how long a handler ran, and how far to overbook for it.
func (s *scheduler[T, R]) ran(d int64) {
	run := s.run.Load() + (d-s.run.Load())/8
	s.run.Store(run)
	s.ahead.Store(min(int64(s.d.cfg.workers)*int64(s.d.cfg.lateness)/4/max(run, 1), int64(s.d.cfg.batch)))
}

// overbook is how many jobs may be admitted beyond the free workers, to
// wait in the run queue for the next free one: as many as the workers get
// through in a quarter of the lateness tolerance at the handlers' usual
// run time, at most a batch. Admitting ahead lets the scheduler decide in
// batches instead of one job per freed worker; admitting further ahead
// than that would have jobs reach their workers late, give their
// admission back and ask again (on SQLite and Redis, a round trip each).
// ran computes it as the handlers' run time changes: the submitters, the
// scheduler and the workers all ask.
func (s *scheduler[T, R]) overbook() int64 { return s.ahead.Load() }

// tolerance is how late a job may reach its worker: a millisecond, plus
// twice the usual backend round trip (which no client can see inside),
// plus how late jobs usually reach their workers in this process (timer
// and goroutine wake-up latency), up to three more milliseconds. Jobs that
// are all late by the usual amount keep their spacing; only lateness beyond
// it bunches starts up, and that is what is refused. On a quiet machine the
// usual lateness is tens of microseconds; on a loaded one, refusing every
// job it delays would give most bookings back.
func (s *scheduler[T, R]) tolerance() int64 {
	lateness := int64(s.d.cfg.lateness)
	return lateness + 2*s.rtt.Load() + min(s.lag.Load(), 3*lateness)
}

// late reports whether j, handed to a worker, must not start: its
// context ended while it waited for the worker (it is resolved with the
// context's error); its key fell behind it meanwhile (a retry-after paused
// the key, or an earlier job of the key went back to its queue); or it
// reached the worker longer after its slot than the tolerance allows (a
// stalled process, scheduler or worker), and starting it now could bunch
// it up with jobs admitted after it. Unless cancelled, it waits at the
// head of its key's queue for a new admission, and the key's bookings go
// back behind it, so that the key's jobs still start in order. Either way
// the key's latest admission is given back (if no later one depends on
// it) by a goroutine of its own: the worker goes on at once to the next
// job, which would otherwise reach it late too while it waited a backend
// round trip for the refund. Only a job whose key was paused or set back
// since it was handed takes the scheduler's lock to decide.
func (s *scheduler[T, R]) late(j *job[T, R], now int64, sample bool) bool {
	if j.slot == 0 || s.d.stopped.Load() {
		return false
	}
	cancelled := j.watched() && j.parent.Err() != nil
	lateness := now - j.slot
	tolerance := s.tolerance()
	// A stall's outlier moves the usual lateness by at most half a
	// millisecond.
	if sample {
		s.lag.Store(s.lag.Load() + (min(max(lateness, 0), 4*int64(time.Millisecond))-s.lag.Load())/8)
	}
	if !cancelled && lateness <= tolerance && s.setBack[j.handed>>24].Load()&setBackMask == j.handed&setBackMask {
		return false // nothing set its key back since it was handed
	}
	s.mu.Lock()
	k := s.keys[j.info.Key] // nil if it went idle and was dropped: nothing is ahead of j
	behind := k != nil && (k.paused > now || k.jobs.head != nil && k.jobs.head.seq < j.seq)
	if !cancelled && !behind && lateness <= tolerance {
		s.mu.Unlock()
		return false
	}
	if k == nil {
		k = s.key(j.info.Key)
	}
	// Counted while j is unresolved: Shutdown waits on wg only once every
	// job is resolved.
	s.d.wg.Add(1)
	var refund giving
	j.slot = 0
	s.idle.Add(1) // j's worker reservation
	if cancelled {
		refund = refunding([]driver.Admission{s.admission(j)})
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
	} else {
		s.d.stats.requeued.Add(1 + int64(k.booked.n)) // j, and the bookings unbook puts back
		s.setBackKey(k)
		if lateness > tolerance {
			if k.stats != nil {
				k.stats.late.Add(1)
			}
		}
		j.setState(queued)
		s.insertJob(k, j)
		// The key's bookings go back behind it, so that its jobs still
		// start in order; their admissions and j's are given back.
		refund = s.unbook(k, j)
	}
	held := s.hold(k)
	s.mu.Unlock()
	go s.giveBack(k, refund, held)
	s.signal() // j's worker is free for other keys' jobs meanwhile
	return true
}
