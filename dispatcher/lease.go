package dispatcher

import (
	"context"
	"strconv"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A key whose limit caps its work in flight (bucket.Limit.Inflight) takes
// a lease with each admission, in the same backend call as the rate. The
// job holds it while it is booked and while its handler runs: the worker
// releases it when the run ends, and the scheduler gives it back with the
// admission when the job goes back to its queue or is cancelled. A key at
// its cap waits in the scheduler like a throttled one, never in a worker:
// a release in this process wakes it at once; a release elsewhere is seen
// when it asks again, after 1ms doubling to atCapPoll. While handlers run,
// renewLeases renews their leases every third of the lease TTL, so that
// the leases of a process that dies come back within the TTL.

// atCapPoll bounds how long a key at its cap waits before asking again.
const atCapPoll = 50 * time.Millisecond

// releaseTimeout bounds a lease release the dispatcher makes after its
// base context ended (a hard stop): Shutdown gives leases back, but does
// not wait on an unreachable backend longer than this.
const releaseTimeout = time.Second

// leaseID names the lease of j's latest admission: unique to the
// dispatcher (its random prefix), the job (seq) and the admission (lease),
// so that giving back an earlier admission's lease never releases a
// later one's.
func (s *scheduler[T, R]) leaseID(j *job[T, R]) driver.LeaseID {
	return driver.LeaseID(s.leasePrefix + strconv.FormatUint(j.seq, 36) + "." + strconv.FormatUint(uint64(j.lease), 36))
}

// fillRequest writes the request of j's latest admission, under its
// limit j.lim, to r, a zero Request.
func (s *scheduler[T, R]) fillRequest(r *driver.Request, j *job[T, R]) {
	r.Key, r.Limit, r.Cost = j.info.Key, j.lim.Limit, j.cost
	if j.lim.Inflight > 0 {
		r.Lease, r.LeaseTTL = s.leaseID(j), s.d.cfg.leaseTTL
	}
}

// holdsLease reports whether j, running or handed to a worker, holds a
// lease: admitted by a capped limit. Called by j's worker, or with s.mu
// held.
func (j *job[T, R]) holdsLease() bool {
	return j.slot != 0 && j.lim != nil && j.lim.Inflight > 0
}

// A giving is what giving admissions back takes: their refunds (joined
// by driver.Unbook), and the leases of every one of them, of which a
// joined refund releases only the latest's.
type giving struct {
	refunds []driver.Admission
	leases  []driver.LeaseRef
}

// unbookAll returns the giving of admissions of one key, latest first.
func unbookAll(latestFirst []driver.Admission) giving {
	return giving{refunds: driver.Unbook(latestFirst), leases: leasesOf(nil, latestFirst)}
}

// refunding returns the giving of single admissions, each refunded on its
// own. Their leases are listed too: a refund releases its lease, but not
// when it fails, as every call does once a hard stop ended the base
// context.
func refunding(as []driver.Admission) giving {
	return giving{refunds: as, leases: leasesOf(nil, as)}
}

func (g *giving) add(o giving) {
	g.refunds = append(g.refunds, o.refunds...)
	g.leases = append(g.leases, o.leases...)
}

func (g giving) empty() bool { return len(g.refunds) == 0 && len(g.leases) == 0 }

// leasesOf appends the leases of the capped admissions among as.
func leasesOf(refs []driver.LeaseRef, as []driver.Admission) []driver.LeaseRef {
	for _, a := range as {
		if a.Lease != "" {
			refs = append(refs, driver.LeaseRef{Key: a.Key, ID: a.Lease})
		}
	}
	return refs
}

// refund gives back g: the refunds first, then every lease still listed.
// A failed refund only under-admits (the booking stays charged); a failed
// release holds a place until the lease expires.
func (s *scheduler[T, R]) refund(g giving) {
	for _, a := range g.refunds {
		_ = s.backend.Refund(s.d.base, a.Request, a.Decision)
	}
	if len(g.leases) > 0 && s.leases != nil {
		ctx, cancel := s.releaseContext()
		_ = s.leases.Release(ctx, g.leases)
		cancel()
	}
}

// releaseContext is the context of a lease release: the dispatcher's
// base, or once a hard stop ended it, a second at most.
func (s *scheduler[T, R]) releaseContext() (context.Context, context.CancelFunc) {
	if s.d.base.Err() == nil {
		return s.d.base, func() {}
	}
	return context.WithTimeout(context.WithoutCancel(s.d.base), releaseTimeout)
}

// ranOut releases the lease of j, whose run has ended, and wakes its key
// if it waits at its cap: the next job of the key starts at once.
func (s *scheduler[T, R]) ranOut(j *job[T, R]) {
	if !j.holdsLease() {
		return
	}
	if s.leases != nil {
		ctx, cancel := s.releaseContext()
		_ = s.leases.Release(ctx, []driver.LeaseRef{{Key: j.info.Key, ID: s.leaseID(j)}})
		cancel()
	}
	s.mu.Lock()
	j.slot = 0 // it holds no lease now
	delete(s.leased, j)
	k := s.keys[j.info.Key]
	woke := k != nil && k.atCap && k.phase == keyWaiting
	if woke {
		s.timers.remove(k)
		s.settle(k, s.d.now())
	} else if k != nil && k.phase == keyAsking {
		k.freed = true // its answer may predate the release (see apply)
	}
	s.mu.Unlock()
	if woke {
		s.signal()
	}
}

// atCap puts j back at the head of k's queue after a refusal at k's cap,
// to ask again when a lease of k is released in this process (at once if
// one was, freed, while it asked), or after a poll interval that doubles
// from 1ms to atCapPoll (never later than the first held lease expires).
// Called with s.mu held.
func (s *scheduler[T, R]) atCap(k *keyState[T, R], j *job[T, R], d driver.Decision, now int64, freed bool) {
	k.atCap = true
	k.backoff = min(max(2*k.backoff, time.Millisecond), atCapPoll)
	until := now + int64(min(k.backoff, max(d.Wait, time.Millisecond)))
	if freed {
		until = now
	}
	s.putBack(k, j, until)
}

// renewLeases renews the leases the dispatcher's jobs hold — booked,
// handed to a worker, running — every third of the lease TTL, until
// stopRenewing: after the workers have returned, so that a handler
// running on past a hard stop keeps its place. A renewal outlives the
// base context for the same reason.
func (s *scheduler[T, R]) renewLeases() {
	defer close(s.renewDone)
	t := time.NewTicker(s.d.cfg.leaseTTL / 3)
	defer t.Stop()
	type held struct {
		j *job[T, R]
		n uint32 // its admission, as leaseID names it
	}
	var (
		refs []driver.LeaseRef
		jobs = make(map[driver.LeaseID]held)
	)
	for {
		select {
		case <-s.renewStop:
			return
		case <-t.C:
		}
		refs = refs[:0]
		clear(jobs)
		s.mu.Lock()
		for j := range s.leased {
			if !j.holdsLease() {
				delete(s.leased, j) // given back
				continue
			}
			id := s.leaseID(j)
			refs = append(refs, driver.LeaseRef{Key: j.info.Key, ID: id})
			jobs[id] = held{j, j.lease}
		}
		s.mu.Unlock()
		if len(refs) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.d.base), s.d.cfg.leaseTTL/3)
		lost, err := s.leases.Renew(ctx, refs, s.d.cfg.leaseTTL)
		cancel()
		if err != nil || len(lost) == 0 {
			continue // a failed renewal is tried again at the next tick
		}
		// A lease given back since it was listed is not lost.
		var n int64
		s.mu.Lock()
		for _, l := range lost {
			if h, ok := jobs[l.ID]; ok && h.j.holdsLease() && h.j.lease == h.n {
				n++
			}
		}
		s.mu.Unlock()
		s.d.stats.leasesLost.Add(n)
	}
}

// stopRenewing stops renewLeases and waits for it. Shutdown calls it once
// the workers have returned.
func (s *scheduler[T, R]) stopRenewing() {
	if s.leases == nil {
		return
	}
	close(s.renewStop)
	<-s.renewDone
}
