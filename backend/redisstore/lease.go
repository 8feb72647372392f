package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Renew implements driver.LeaseBackend. It blocks for one round trip for
// the whole slice (a script call per 64 leases on one server; in a
// Cluster a call per lease, pipelined to each master), which ctx does
// not cancel. Each lease still held by its key's clock then expires ttl
// from that clock, unless it expired later already.
//
// While Redis is unavailable, Renew under FailLocal renews the leases the
// local buckets hold, and returns an error matching ErrUnavailable if
// others were asked (Redis may hold them: their holders try again);
// under FailClosed and
// FailOpen it returns an error matching ErrUnavailable, since nothing says
// whether the leases are still held. Under FailLocal, a lease Redis does
// not hold is renewed in the local buckets if they took it, during an
// outage.
func (s *Store) Renew(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if err := driver.CheckRenew(ttl); err != nil {
		return nil, err
	}
	ticks := driver.Ticks(ttl, tick)
	res, err := s.leaseTrip(ctx, leases, func(b []byte, l driver.LeaseRef) []byte {
		return appendLeaseOp(b, opRenew, ticks, l.ID)
	})
	if errors.Is(err, ErrUnavailable) && s.guard.Local() {
		return s.guard.RenewDown(ctx, leases, ttl, err)
	}
	if err != nil {
		return nil, err
	}
	var lost []driver.LeaseRef
	for i, r := range res {
		if !r.r.allowed {
			lost = append(lost, leases[i])
		}
	}
	return s.guard.Renew(ctx, lost, ttl)
}

// Release implements driver.LeaseBackend, in one round trip for the
// whole slice, as Renew. A lease that is not held is left alone: its ID
// is its holder's own, so no other holder's lease is ever freed.
//
// While Redis is unavailable, Release under FailLocal releases the leases
// in the local buckets only (a lease Redis holds stays held there until
// it expires); under FailClosed and FailOpen it returns an error matching
// ErrUnavailable. Under FailLocal the local buckets release the leases
// whatever Redis answers.
func (s *Store) Release(ctx context.Context, leases []driver.LeaseRef) error {
	_, err := s.leaseTrip(ctx, leases, func(b []byte, l driver.LeaseRef) []byte {
		return appendLeaseOp(b, opRelease, 0, l.ID)
	})
	if !s.guard.Local() || errors.Is(err, driver.ErrClosed) {
		return err
	}
	local := s.guard.Release(ctx, leases)
	if err == nil || errors.Is(err, ErrUnavailable) {
		return local
	}
	return err
}

// leaseTrip runs the script's requests on leases, each appended by
// request, in one round trip, and returns their results. It returns an
// error matching ErrUnavailable while Redis is unavailable, an error
// naming the key of the first lease that failed otherwise, and ctx's
// error if ctx ended.
func (s *Store) leaseTrip(ctx context.Context, leases []driver.LeaseRef, request func([]byte, driver.LeaseRef) []byte) ([]result, error) {
	if s.closed.Load() {
		return nil, driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(leases) == 0 {
		return nil, nil
	}
	ops := make([]op, len(leases))
	var args []byte
	for i, l := range leases {
		start := len(args)
		args = request(args, l)
		ops[i] = s.leaseOp(l.Key, args[start:len(args):len(args)])
	}
	if !s.begin() {
		return nil, driver.ErrClosed
	}
	defer s.end()
	ask, probe := s.guard.Ask()
	if !ask {
		return nil, s.guard.Unavailable(nil)
	}
	res := make([]result, len(ops))
	s.run(context.WithoutCancel(ctx), ops, res)
	var (
		answered bool
		failed   = -1
	)
	for i, r := range res {
		if r.err == nil {
			answered = true
		} else if failed < 0 {
			failed = i
		}
	}
	switch {
	case answered || failed < 0:
		s.guard.Settle(nil, probe)
	default:
		s.guard.Settle(res[failed].err, probe)
	}
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case failed < 0:
		return res, nil
	case isUnavailable(res[failed].err):
		return nil, s.guard.Unavailable(res[failed].err)
	}
	return nil, fmt.Errorf("redisstore: key %q: %w", leases[failed].Key, res[failed].err)
}
