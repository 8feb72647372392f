package failover

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// What a Guard answers about leases (driver.LeaseBackend) while the
// server is unavailable. Admissions of capped limits follow the policy as
// others do: FailClosed refuses them with the error, FailOpen admits them
// without a lease (the cap is not applied), FailLocal's memstore keeps
// their leases.

// RenewAnswer answers a renewal the server could not take (cause, nil if
// it was not asked): under FailLocal the local buckets renew the leases
// they hold, taken while the server was unavailable, and report the
// others lost, those held on the server among them (they cannot be
// renewed there); under FailClosed and FailOpen, the error of
// Unavailable, for no policy makes a lease held that is not.
func (g *Guard) RenewAnswer(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration, cause error) ([]driver.LeaseRef, error) {
	if g.local != nil {
		return g.local.Renew(ctx, leases, ttl)
	}
	return nil, g.Unavailable(cause)
}

// Release releases leases in the local buckets too, under FailLocal, so
// that those taken there while the server was unavailable come back at
// once, whether or not the server answers now.
func (g *Guard) Release(ctx context.Context, leases []driver.LeaseRef) {
	if g.local != nil {
		g.local.Release(ctx, leases)
	}
}
