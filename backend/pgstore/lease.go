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
// renewed. While PostgreSQL is unavailable, under FailLocal the local
// buckets answer (they hold the leases taken while it was down, and
// report the others lost); under FailClosed and FailOpen Renew returns
// an error matching ErrUnavailable.
func (s *Store) Renew(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if s.closed.Load() {
		return nil, driver.ErrClosed
	}
	if err := driver.CheckRenew(ttl); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
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
	held := make([]bool, len(leases))
	if len(ops) > 0 {
		ask, probe := s.guard.Ask()
		if !ask {
			return s.guard.RenewAnswer(ctx, leases, ttl, nil)
		}
		a, err := s.admits.Do(ctx, admission{many: ops})
		s.guard.Settle(err, probe)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, driver.ErrClosed):
			return nil, err
		case !isUnavailable(err):
			return nil, fmt.Errorf("pgstore: renewing %d leases: %w", len(ops), err)
		default:
			return s.guard.RenewAnswer(ctx, leases, ttl, err)
		}
		for k, i := range idx {
			held[i] = a.many[k].code == codeAllowed
		}
	}
	var lost []driver.LeaseRef
	for i, l := range leases {
		if !held[i] {
			lost = append(lost, l)
		}
	}
	return lost, nil
}

// Release implements driver.LeaseBackend: one statement deletes every
// lease of leases, in a round trip shared with concurrent calls (as
// Admit's), under the locks admissions of their keys take. It blocks for
// that round trip, which ctx does not cancel (Options.Timeout bounds
// it): if ctx ends first Release returns ctx's error at once, and the
// leases may have been released. Under FailLocal the local buckets
// release them too. While PostgreSQL is unavailable the leases stay
// held there until they expire: Release returns an error matching
// ErrUnavailable under FailClosed, and nil under the other policies, as
// Refund does.
func (s *Store) Release(ctx context.Context, leases []driver.LeaseRef) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var ops []op
	for _, l := range leases {
		if storable(l) {
			ops = append(ops, releaseOp(l))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	s.guard.Release(ctx, leases)
	return s.write(ctx, "", admission{many: ops})
}
