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
// While Redis is unavailable (in a Cluster, the master of some of the
// leases' keys: the others are renewed), Renew under FailLocal renews the
// leases the local buckets hold, and returns an error matching
// ErrUnavailable if others were asked (Redis may hold them: their holders
// try again); under FailClosed and FailOpen it returns an error matching
// ErrUnavailable, since nothing says whether the leases are still held.
// Under FailLocal, a lease Redis does not hold is renewed in the local
// buckets if they took it, during an outage.
func (s *Store) Renew(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if err := driver.CheckRenew(ttl); err != nil {
		return nil, err
	}
	ticks := driver.Ticks(ttl, tick)
	res, err := s.leaseTrip(ctx, leases, func(b []byte, l driver.LeaseRef) []byte {
		return appendLeaseOp(b, opRenew, ticks, l.ID)
	})
	if err != nil {
		return nil, err
	}
	var (
		lost, down []driver.LeaseRef
		cause      error // why the first of down is
	)
	for i, r := range res {
		switch {
		case r.err != nil:
			if cause == nil {
				cause = r.err
			}
			down = append(down, leases[i])
		case !r.r.allowed:
			lost = append(lost, leases[i])
		}
	}
	if len(down) > 0 {
		if !s.guard.Local() {
			return nil, cause
		}
		if _, err := s.guard.RenewDown(ctx, down, ttl, cause); err != nil {
			return nil, err
		}
	}
	return s.guard.Renew(ctx, lost, ttl)
}

// Release implements driver.LeaseBackend, in one round trip for the
// whole slice, as Renew. A lease that is not held is left alone: its ID
// is its holder's own, so no other holder's lease is ever freed.
//
// While Redis is unavailable (in a Cluster, the master of some of the
// leases' keys: the others are released), Release under FailLocal
// releases the leases in the local buckets only (a lease Redis holds
// stays held there until it expires); under FailClosed and FailOpen it
// returns an error matching ErrUnavailable. Under FailLocal the local
// buckets release the leases whatever Redis answers.
func (s *Store) Release(ctx context.Context, leases []driver.LeaseRef) error {
	res, err := s.leaseTrip(ctx, leases, func(b []byte, l driver.LeaseRef) []byte {
		return appendLeaseOp(b, opRelease, 0, l.ID)
	})
	for _, r := range res {
		if err == nil && r.err != nil {
			err = r.err // the first lease whose master is unavailable
		}
	}
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
// request, in one round trip, and returns their results. A lease whose
// master is unavailable (in a Cluster, the master of its key's slot;
// else Redis) has an error matching ErrUnavailable as its result's. It
// returns an error naming the key of the first lease that failed for
// another reason, ctx's error if ctx ended, and ErrClosed once the Store
// is closed.
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
	res := make([]result, len(ops))
	ask, probe := s.guard.Ask() // in a Cluster, always: its masters are asked below
	if !ask {
		for i := range res {
			res[i].err = s.guard.Unavailable(nil)
		}
		return res, nil
	}
	// In a Cluster while a master is known down, the leases on it are not
	// asked about: at holds the indices of those that are (nil: all).
	var (
		at  []int
		via []*master // each one's master, if known down
	)
	if s.masters != nil && s.masters.anyDown() {
		at = make([]int, 0, len(ops))
		for i := range ops {
			m, ask := s.masters.ask(leases[i].Key)
			if !ask {
				res[i].err = s.guard.Unavailable(m.cause())
				continue
			}
			ops[len(at)] = ops[i]
			at, via = append(at, i), append(via, m)
		}
		ops = ops[:len(at)]
	}
	index := func(k int) int {
		if at == nil {
			return k
		}
		return at[k]
	}
	out := res
	if at != nil {
		out = make([]result, len(ops))
	}
	if len(ops) > 0 {
		s.run(context.WithoutCancel(ctx), ops, out)
	}
	var (
		answered bool
		failed   = -1 // the first lease whose call failed
	)
	for k := range ops {
		i := index(k)
		res[i] = out[k]
		if res[i].err == nil {
			answered = true
		} else if failed < 0 {
			failed = i
		}
		if s.masters != nil {
			var m *master
			if via != nil {
				m = via[k]
			}
			s.masters.settle(leases[i].Key, m, res[i].err, false)
		}
	}
	if s.masters == nil {
		if answered || failed < 0 {
			s.guard.Settle(nil, probe)
		} else {
			s.guard.Settle(res[failed].err, probe)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for k := range ops {
		i := index(k)
		switch err := res[i].err; {
		case err == nil:
		case isUnavailable(err):
			res[i].err = s.guard.Unavailable(err)
		default:
			return nil, fmt.Errorf("redisstore: key %q: %w", leases[i].Key, err)
		}
	}
	return res, nil
}
