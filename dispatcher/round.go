package dispatcher

import (
	"container/heap"
	"errors"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// rounds is how many batches may be decided at once.
const rounds = 2

// A round is a batch of admissions and the keys that asked for them, and
// the jobs it hands to workers.
type round[T, R any] struct {
	batch  []driver.Admission
	asked  []*keyState[T, R]
	handed []*job[T, R]
}

// decide has the backend decide r's batch and acts on the decisions.
func (s *scheduler[T, R]) decide(r *round[T, R]) {
	before := s.d.now()
	driver.AdmitBatch(s.d.base, s.backend, r.batch)
	after := s.d.now()
	s.d.stats.roundTrips.record(after - before)
	// Track the round trip: a job may start that much after the backend
	// decided without being late.
	s.rtt.Store(s.rtt.Load() + (after-before-s.rtt.Load())/8)
	r.handed = s.apply(r.batch, r.asked, r.handed, before, after)
	clear(r.batch) // drop the limits' quota slices
	clear(r.asked)
}

// releaseDue hands booked jobs whose slot has come to their workers and
// makes waiting keys whose time has come ready.
func (s *scheduler[T, R]) releaseDue(now int64) {
	for at, ok := s.slots.next(); ok && at <= now; at, ok = s.slots.next() {
		j := heap.Pop(&s.slots).(*job[T, R])
		k := s.keys[j.info.Key]
		k.booked.remove(j)
		s.hand(k, j)
		s.dropIdle(k, now)
	}
	for at, ok := s.timers.next(); ok && at <= now; at, ok = s.timers.next() {
		k := heap.Pop(&s.timers).(*keyState[T, R])
		if k.phase == keyWaiting {
			s.settle(k, now)
		}
	}
}

// collect takes the heads of ready keys, as many as there are free
// workers, reserving a worker for each. Heads of unlimited keys go
// straight to their worker.
func (s *scheduler[T, R]) collect(batch []driver.Admission, asked []*keyState[T, R], now int64) ([]driver.Admission, []*keyState[T, R]) {
	for s.idle.Load() > -s.overbook() && len(batch) < s.d.cfg.batch {
		k, ok := s.ready.pop()
		if !ok {
			break
		}
		if k.phase != keyReady {
			continue // left the ring while queued in it
		}
		if b := k.cancelledBooking(); b != nil {
			s.cancelBooked(k, b) // k asks again once the booking is back
			continue
		}
		j := s.popJob(k)
		if j == nil {
			s.setPhase(k, keyIdle)
			s.dropIdle(k, now)
			continue
		}
		s.idle.Add(-1)
		lim := s.d.lim.Limit(k.name)
		if lim.IsUnlimited() {
			j.slot = 0
			s.hand(k, j)
			s.settle(k, now)
			continue
		}
		j.setState(asking)
		s.setPhase(k, keyAsking)
		k.asking = j
		j.lim = s.limits.intern(lim)
		if j.lim.Inflight > 0 {
			j.lease++ // a lease ID of this admission's own
		}
		// Filled in place: a Request returned by value costs a copy of
		// its dozen words on every admission.
		batch = append(batch, driver.Admission{})
		r := &batch[len(batch)-1].Request
		s.fillRequest(r, j)
		r.MaxWait = s.window()
		asked = append(asked, k)
	}
	return batch, asked
}

// apply acts on the decisions of a batch sent at before and answered at
// after, delivering the jobs it hands to workers with handed (see
// takeHanded), which it returns. The backend decided somewhere in
// between, so a slot is released no sooner than after+Wait (never early)
// and judged late from before+Wait (never lenient).
func (s *scheduler[T, R]) apply(batch []driver.Admission, asked []*keyState[T, R], handed []*job[T, R], before, after int64) []*job[T, R] {
	var (
		refunds                     []driver.Admission
		held                        []*keyState[T, R] // asking nothing until the refunds are done
		admitted, throttled, paused int64             // Stats'
		atCap                       int64
		unknown                     []driver.LeaseRef // leases of admissions whose outcome an error hid
	)
	now := after
	s.mu.Lock()
	for i, k := range asked {
		a := &batch[i]
		j := k.asking
		k.asking = nil
		allowed := a.Err == nil && a.Decision.Allowed
		// A lease of k released here while it asked: at its cap, it asks
		// again at once rather than after its poll interval.
		freed := k.freed
		k.atCap, k.freed = false, false
		switch {
		case j.getState() != asking || s.stopped || j.watched() && j.parent.Err() != nil: // cancelled or stopped meanwhile
			if allowed {
				refunds = append(refunds, *a)
			}
			if j.getState() == asking {
				err := j.parent.Err()
				if s.stopped || err == nil {
					err = ErrClosed
				}
				s.resolveWaiting(j, err, outcomeCancelled)
			}
			s.idle.Add(1)
			if allowed && !s.stopped {
				s.setPhase(k, keyRefunding) // held (see hold) until the refund is done
				held = append(held, k)
			} else {
				s.settle(k, now)
			}
		case a.Err != nil && permanent(a.Err):
			s.idle.Add(1)
			s.resolveWaiting(j, a.Err, outcomeFailed)
			s.settle(k, now)
		case a.Err != nil: // the backend failed: keep the job, try again later
			if a.Lease != "" {
				// It may have taken the lease before the error (a timeout
				// after the script ran): give it back, whoever holds it.
				unknown = append(unknown, driver.LeaseRef{Key: a.Key, ID: a.Lease})
			}
			s.d.stats.backendErrors.Add(1)
			s.d.stats.setBackendErr(a.Err)
			k.backoff = min(max(2*k.backoff, 10*time.Millisecond), time.Second)
			s.putBack(k, j, now+int64(k.backoff))
		case allowed && k.paused > now: // a retry-after arrived meanwhile
			paused++
			refunds = append(refunds, *a)
			s.putBack(k, j, k.paused)
		case allowed && k.jobs.head != nil && k.jobs.head.seq < j.seq: // an earlier job came back meanwhile
			refunds = append(refunds, *a)
			s.putBack(k, j, now)
		case a.Err == nil && a.Decision.AtCap:
			atCap++
			s.atCap(k, j, a.Decision, now, freed)
		case allowed:
			admitted++
			k.backoff = 0
			if j.lim.Inflight > 0 {
				s.leased[j] = struct{}{} // renewed until it runs out (renewLeases)
			}
			j.start, j.booking = a.Decision.Start(), a.Decision.Booking
			if k.stats != nil {
				k.stats.interval.Store(int64(a.Decision.Interval))
			}
			j.slot = before + int64(a.Decision.Wait)
			if a.Decision.Wait <= 0 {
				s.hand(k, j)
			} else {
				j.setState(booked)
				j.releaseAt = after + int64(a.Decision.Wait)
				k.booked.pushBack(j)
				s.slots.set(j)
			}
			s.settle(k, now) // ask for the next job: it may fit in the booking window too
		default:
			// Ask again half a booking window before the slot opens, so
			// that the next admission books the slot itself: asking when
			// it opens would start late by the timer's latency and lose
			// that much of the rate at every step.
			throttled++
			if k.stats != nil {
				k.stats.throttled.Add(1)
			}
			s.putBack(k, j, now+int64(a.Decision.Wait)-int64(s.window()/2))
		}
	}
	handed = s.takeHanded(handed)
	s.mu.Unlock()
	handed = s.deliver(handed)
	s.d.stats.countAdmissions(admitted, throttled, paused, atCap)
	g := refunding(refunds)
	g.leases = append(g.leases, unknown...)
	s.refund(g)
	if len(held) > 0 {
		s.mu.Lock()
		for _, k := range held {
			s.resume(k)
		}
		s.mu.Unlock()
		s.signal()
	}
	return handed
}

// putBack returns j to the head of k's queue, frees its worker, and makes
// k wait until the given time.
func (s *scheduler[T, R]) putBack(k *keyState[T, R], j *job[T, R], until int64) {
	j.setState(queued)
	s.insertJob(k, j)
	s.idle.Add(1)
	s.wait(k, until)
}

func permanent(err error) bool {
	return errors.Is(err, bucket.ErrInvalidLimit) || errors.Is(err, bucket.ErrImpossible) ||
		errors.Is(err, bucket.ErrInvalidCost) || errors.Is(err, bucket.ErrEmptyKey) ||
		errors.Is(err, bucket.ErrNoLeases) || errors.Is(err, bucket.ErrNoLease) || errors.Is(err, driver.ErrInvalidLeaseTTL)
}
