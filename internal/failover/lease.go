package failover

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Leases under each policy: the local buckets of FailLocal keep the
// leases of the capped requests they admit, as memstore does; FailOpen
// admits a capped request without a lease (its cap is lost while the
// server is down); FailClosed admits nothing. A store renews and releases
// on the local buckets too, under FailLocal, for the leases they took.

// Local reports whether the Guard keeps local buckets (FailLocal).
func (g *Guard) Local() bool { return g.local != nil }

// RenewDown renews leases while the server is down (err says how): the
// local buckets renew those they took; if any other is among leases, the
// server may hold it, and RenewDown returns err, so that its holder tries
// again rather than believe it lost.
func (g *Guard) RenewDown(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration, err error) ([]driver.LeaseRef, error) {
	if g.local == nil {
		return nil, err
	}
	others, lerr := g.local.Renew(ctx, leases, ttl)
	if lerr != nil {
		return nil, lerr
	}
	if len(others) > 0 {
		return nil, err
	}
	return nil, nil
}

// Renew renews the leases the local buckets hold and returns the others;
// without local buckets it returns leases as they are.
func (g *Guard) Renew(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if g.local == nil || len(leases) == 0 {
		return leases, nil
	}
	return g.local.Renew(ctx, leases, ttl)
}

// Release releases leases in the local buckets, if there are any.
func (g *Guard) Release(ctx context.Context, leases []driver.LeaseRef) error {
	if g.local == nil {
		return nil
	}
	return g.local.Release(ctx, leases)
}
