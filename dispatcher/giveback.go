package dispatcher

import "github.com/leakybucket/leakybucket/bucket/driver"

// cancelWaiting resolves a job whose context ended before it started. A
// booked job is resolved first and its booking given back after, so that
// neither its future nor a Submit waiting for its place waits for the
// backend's round trip. A job handed to a worker is resolved by late,
// when the worker meets it.
func (s *scheduler[T, R]) cancelWaiting(j *job[T, R]) {
	s.mu.Lock()
	switch j.getState() {
	case queued:
		s.removeJob(s.keys[j.info.Key], j)
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
	case booked:
		s.cancelBooked(s.keys[j.info.Key], j)
	case asking:
		// apply sees the state and gives the admission back.
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
	}
	s.mu.Unlock()
	s.signal()
}

// unbook moves k's bookings back to its queue, freeing their workers,
// and returns the refunds that give back the latest booking's admission
// together with those of the bookings, and then of j (a job of k going
// back to the queue after it was handed; nil if none), made right before
// it (driver.Unbook). Called with s.mu held.
func (s *scheduler[T, R]) unbook(k *keyState[T, R], j *job[T, R]) giving {
	var latestFirst []driver.Admission
	for b := k.booked.tail; b != nil; b = b.prev {
		latestFirst = append(latestFirst, s.admission(b))
	}
	if j != nil {
		latestFirst = append(latestFirst, s.admission(j))
	}
	for b := k.booked.popFront(); b != nil; b = k.booked.popFront() {
		s.slots.remove(b)
		b.setState(queued)
		b.slot = 0
		s.insertJob(k, b)
		s.idle.Add(1)
	}
	return unbookAll(latestFirst)
}

// giveBack refunds admissions of k, in order; if k was held for them, k
// may then ask again.
func (s *scheduler[T, R]) giveBack(k *keyState[T, R], g giving, held bool) {
	defer s.d.wg.Done()
	s.refund(g)
	if !held {
		return
	}
	s.mu.Lock()
	s.resume(k)
	s.mu.Unlock()
	s.signal()
}

// cancelBooked resolves j, a job of k booked ahead whose context ended,
// and gives its booking back on a goroutine of its own, k asking nothing
// meanwhile (see hold): an admission made first would make the refund
// find a later one and do nothing, and the slot would be lost. Neither j's
// future nor a Submit waiting for its place waits for the round trip.
// If j is among k's latest bookings whose contexts have all ended (jobs
// submitted with one context that ended), they all go together, in one
// refund of their joined booking (driver.Unbook): given back one at a time,
// each refund after the first would find its booking superseded by the
// previous refund and do nothing, and only the latest slot would come
// back. Called with s.mu held.
func (s *scheduler[T, R]) cancelBooked(k *keyState[T, R], j *job[T, R]) {
	var gone []*job[T, R] // latest first
	in := false
	for b := k.booked.tail; b != nil && b.watched() && b.parent.Err() != nil; b = b.prev {
		gone = append(gone, b)
		in = in || b == j
	}
	if !in {
		// A later booking stands: j's slot cannot come back (see
		// driver.Backend.Refund), but its refund costs nothing.
		gone = append(gone[:0], j)
	}
	latestFirst := make([]driver.Admission, len(gone))
	for i, b := range gone {
		latestFirst[i] = s.admission(b)
	}
	// Counted while j is unresolved: Shutdown waits on wg only once every
	// job is resolved.
	s.d.wg.Add(1)
	for _, b := range gone {
		k.booked.remove(b)
		s.slots.remove(b)
		b.slot = 0 // its lease goes with the give-back
		s.idle.Add(1)
		s.resolveWaiting(b, b.parent.Err(), outcomeCancelled)
	}
	go s.giveBack(k, unbookAll(latestFirst), s.hold(k))
}

// cancelledBooking returns k's latest booking if its job's context has
// ended but the watch on it has not resolved the job yet, else nil: the
// caller may have seen the context end and submitted the key's next job
// already, which must not be admitted behind the stale booking. Only the
// latest counts: a refund gives back nothing that a later admission
// depends on.
func (k *keyState[T, R]) cancelledBooking() *job[T, R] {
	if b := k.booked.tail; b != nil && b.watched() && b.parent.Err() != nil {
		return b
	}
	return nil
}

// hold makes k ask nothing while an admission of it is refunded: an
// admission made first would make the refund find a later one and do
// nothing. It reports false if k cannot be held: its next admission is
// being decided, or another refund holds it. Called with s.mu held.
func (s *scheduler[T, R]) hold(k *keyState[T, R]) bool {
	if k.phase == keyAsking || k.phase == keyRefunding {
		return false
	}
	s.timers.remove(k)
	s.setPhase(k, keyRefunding)
	return true
}

// resume lets a held key ask again, unless a hard stop has settled it
// meanwhile. Called with s.mu held.
func (s *scheduler[T, R]) resume(k *keyState[T, R]) {
	if k.phase == keyRefunding {
		s.settle(k, s.d.now())
	}
}

// admission returns the admission j was given, as a refund needs it.
func (s *scheduler[T, R]) admission(j *job[T, R]) driver.Admission {
	a := driver.Admission{Decision: driver.Decision{Allowed: true, Now: j.start, Booking: j.booking}}
	s.fillRequest(&a.Request, j)
	return a
}
