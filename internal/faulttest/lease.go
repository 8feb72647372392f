package faulttest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// LeasesWhileDown checks what d, a driver.LeaseBackend, does with capped
// requests and their leases under its policy, "FailClosed", "FailOpen" or
// "FailLocal": FailClosed fails admissions, renewals and releases with
// d.Unavailable; FailOpen admits capped requests without a lease (the
// cap is lost while the server is down) and fails renewals and releases
// with d.Unavailable, since nothing says whether a lease is held; FailLocal
// decides them with the local buckets' leases, cap included, and renews
// and releases those.
func LeasesWhileDown(t *testing.T, policy string, d Down) {
	s, ok := d.Store.(driver.LeaseBackend)
	require.True(t, ok, "the store is not a driver.LeaseBackend")
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerHour(100).WithBurst(100).WithInflight(1))
	leased := func(id string) driver.Request {
		return driver.Request{Key: "k", Limit: lim, Cost: 1, Lease: driver.LeaseID(id)}
	}
	refs := func(ids ...string) []driver.LeaseRef {
		out := make([]driver.LeaseRef, len(ids))
		for i, id := range ids {
			out[i] = driver.LeaseRef{Key: "k", ID: driver.LeaseID(id)}
		}
		return out
	}
	switch policy {
	case "FailClosed", "FailOpen":
		for _, id := range []string{"a", "b"} {
			dec, err := s.Admit(ctx, leased(id))
			if policy == "FailClosed" {
				assert.ErrorIs(t, err, d.Unavailable, "Admit of lease %q without a server", id)
				continue
			}
			require.NoError(t, err, "Admit of lease %q without a server", id)
			assert.True(t, dec.Allowed, "Admit of lease %q with inflight=1 without a server: want allowed, the cap lost", id)
			assert.NoError(t, s.Refund(ctx, leased(id), dec), "Refund of lease %q without a server", id)
		}
		_, err := s.Renew(ctx, refs("a"), time.Second)
		assert.ErrorIs(t, err, d.Unavailable, "Renew without a server")
		assert.ErrorIs(t, s.Release(ctx, refs("a")), d.Unavailable, "Release without a server")
	case "FailLocal":
		dec, err := s.Admit(ctx, leased("a"))
		require.NoError(t, err)
		require.True(t, dec.Allowed, "first lease without a server")
		assert.True(t, d.IsLocal(dec), "first lease without a server: want decided locally")
		dec, err = s.Admit(ctx, leased("b"))
		require.NoError(t, err)
		assert.True(t, dec.AtCap, "second lease of inflight=1 without a server: want refused at the local cap")
		lost, err := s.Renew(ctx, refs("a"), time.Second)
		require.NoError(t, err, "Renew without a server, of a local lease")
		assert.Empty(t, lost, "Renew without a server, of a local lease")
		// A lease the local buckets do not hold may be the server's: its
		// holder must try again, not be told it lost it.
		_, err = s.Renew(ctx, refs("a", "b"), time.Second)
		assert.ErrorIs(t, err, d.Unavailable, "Renew without a server, of a lease the local buckets do not hold")
		require.NoError(t, s.Release(ctx, refs("a")), "Release without a server")
		dec, err = s.Admit(ctx, leased("b"))
		require.NoError(t, err)
		assert.True(t, dec.Allowed, "lease without a server after the local one was released")
	default:
		require.Failf(t, "unknown policy", "%q", policy)
	}
}
