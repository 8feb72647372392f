package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// MaxLeaseIDLen is the longest lease ID a Store takes, in bytes: a
// lease's key and ID together are an entry of its primary key's index,
// which holds at most 2,704 bytes, and a key may have MaxKeyLen.
const MaxLeaseIDLen = 512

// ErrLeaseIDTooLong is the error of an admission whose lease ID is longer
// than MaxLeaseIDLen.
var ErrLeaseIDTooLong = fmt.Errorf("pgstore: lease ID longer than %d bytes", MaxLeaseIDLen)

func checkLease(id driver.LeaseID) error {
	if len(id) > MaxLeaseIDLen {
		return fmt.Errorf("%w: %d", ErrLeaseIDTooLong, len(id))
	}
	return nil
}

// storable reports whether l could have been taken: a lease of an empty
// key, with an empty ID, or too long for the table was never held.
func storable(l driver.LeaseRef) bool {
	return l.Key != "" && l.ID != "" && checkKey(l.Key) == nil && checkLease(l.ID) == nil
}

// Renew implements driver.LeaseBackend: it renews every lease of leases
// that is still held, to ttl from the database's clock, and returns the
// others, in the order given. One statement renews the whole slice, in
// a round trip shared with concurrent calls (as Admit's), under the
// locks admissions of their keys take. It blocks for that round trip,
// which ctx does not cancel (Options.Timeout bounds it): if ctx ends
// first Renew returns ctx's error at once, and the leases may have been
// renewed.
//
// While PostgreSQL is unavailable, Renew under FailLocal renews the
// leases the local buckets hold, and returns an error matching
// ErrUnavailable if others were asked (the database may hold them: their
// holders try again); under
// FailClosed and FailOpen it returns an error matching ErrUnavailable,
// since nothing says whether the leases are still held. Under FailLocal,
// a lease the database does not hold is renewed in the local buckets if
// they took it, during an outage. (redisstore's Renew does the same.)
func (s *Store) Renew(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if err := driver.CheckRenew(ttl); err != nil {
		return nil, err
	}
	var (
		idx   []int
		ops   []op
		ticks = driver.Ticks(ttl, tick)
	)
	for i, l := range leases {
		if storable(l) {
			idx = append(idx, i)
			ops = append(ops, renewOp(l, ticks))
		}
	}
	a, err := s.leaseTrip(ctx, "renewing", ops)
	if errors.Is(err, ErrUnavailable) && s.guard.Local() {
		return s.guard.RenewDown(ctx, leases, ttl, err)
	}
	if err != nil {
		return nil, err
	}
	held := make([]bool, len(leases))
	for k, i := range idx {
		held[i] = a.many[k].code == codeAllowed
	}
	var lost []driver.LeaseRef
	for i, l := range leases {
		if !held[i] {
			lost = append(lost, l)
		}
	}
	return s.guard.Renew(ctx, lost, ttl)
}

// Release implements driver.LeaseBackend: one statement deletes every
// lease of leases, in a round trip shared with concurrent calls (as
// Admit's), under the locks admissions of their keys take. It blocks for
// that round trip, which ctx does not cancel (Options.Timeout bounds
// it): if ctx ends first Release returns ctx's error at once, and the
// leases may have been released. A lease that is not held is left
// alone: its ID is its holder's own, so no other holder's lease is ever
// freed.
//
// While PostgreSQL is unavailable, Release under FailLocal releases the
// leases in the local buckets only (a lease the database holds stays
// held there until it expires); under FailClosed and FailOpen it returns
// an error matching ErrUnavailable. Under FailLocal the local buckets
// release the leases whatever the database answers. (redisstore's
// Release does the same.)
func (s *Store) Release(ctx context.Context, leases []driver.LeaseRef) error {
	var ops []op
	for _, l := range leases {
		if storable(l) {
			ops = append(ops, releaseOp(l))
		}
	}
	_, err := s.leaseTrip(ctx, "releasing", ops)
	if !s.guard.Local() || errors.Is(err, driver.ErrClosed) {
		return err
	}
	local := s.guard.Release(ctx, leases)
	if err == nil || errors.Is(err, ErrUnavailable) {
		return local
	}
	return err
}

// leaseTrip runs ops, the requests of a Renew or Release (what it is
// doing, for errors), as one call of the batcher: one statement, in a
// round trip shared with concurrent calls. It returns an error matching
// ErrUnavailable while PostgreSQL is unavailable, driver.ErrClosed once
// the Store is closed, ctx's error if ctx ended, and otherwise the
// database's error.
func (s *Store) leaseTrip(ctx context.Context, what string, ops []op) (answer, error) {
	if s.closed.Load() {
		return answer{}, driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return answer{}, err
	}
	if len(ops) == 0 {
		return answer{}, nil
	}
	ask, probe := s.guard.Ask()
	if !ask {
		return answer{}, s.guard.Unavailable(nil)
	}
	a, err := s.admits.Do(ctx, admission{many: ops})
	s.guard.Settle(err, probe)
	switch {
	case err == nil:
		return a, nil
	case ctx.Err() != nil:
		return answer{}, ctx.Err()
	case errors.Is(err, driver.ErrClosed):
		return answer{}, err
	case isUnavailable(err):
		return answer{}, s.guard.Unavailable(err)
	}
	return answer{}, fmt.Errorf("pgstore: %s %d leases: %w", what, len(ops), err)
}
