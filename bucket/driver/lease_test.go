package driver_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

func capped(id string, inflight int64) driver.Request {
	return driver.Request{
		Key:   "k",
		Limit: driver.Limit{Rate: 1000, Period: time.Second, Burst: 1000, Inflight: inflight},
		Cost:  1, Lease: driver.LeaseID(id), LeaseTTL: time.Second,
	}
}

// DecideLeased takes a lease with each admission up to the cap, counts a
// holder asking again once, refuses at the cap without charging the
// rate, and lets expired leases go.
func TestDecideLeased(t *testing.T) {
	var (
		st driver.State
		ls driver.Leases
	)
	decide := func(id string, now int64) driver.Decision {
		t.Helper()
		r := capped(id, 2)
		d, err := driver.DecideLeased(&st, &ls, &r, time.Nanosecond, now)
		require.NoError(t, err)
		return d
	}
	assert.True(t, decide("a", 0).Allowed)
	assert.True(t, decide("b", 10).Allowed)
	assert.True(t, decide("a", 20).Allowed, "a holder asking again")
	gen := st.Gen
	d := decide("c", 30)
	assert.False(t, d.Allowed)
	assert.True(t, d.AtCap)
	assert.Equal(t, time.Second+10-30, d.Wait, "at the cap: until b's lease, taken at 10 for 1s, expires (a renewed its own at 20)")
	assert.Equal(t, gen, st.Gen, "a refusal at the cap charged the bucket")
	assert.Equal(t, int64(2), ls.Count(30))

	s1 := int64(time.Second)
	assert.True(t, decide("c", s1+10).Allowed, "b's lease expired at 1s+10")
	assert.False(t, ls.Holds("b", s1+10))
	assert.True(t, ls.Holds("a", s1+10), "a renewed its lease at 20")
	assert.True(t, ls.Release("a"))
	assert.False(t, ls.Release("a"), "a second release")
	assert.True(t, decide("d", s1+11).Allowed)
	assert.Equal(t, 2*s1+11, ls.FreshAt())

	assert.False(t, ls.Renew("a", 2*s1, 3*s1), "renewal of a released lease")
	assert.True(t, ls.Renew("d", 2*s1, 5*s1))
	assert.True(t, ls.Renew("d", 2*s1, 3*s1), "a shorter renewal")
	assert.Equal(t, 5*s1, ls.FreshAt(), "a shorter renewal shortened the lease")
}

// Decide, which keeps no leases, refuses a capped request rather than
// admit it uncapped; a capped request needs a lease ID and a sane TTL.
func TestLeaseValidation(t *testing.T) {
	var st driver.State
	r := capped("a", 1)
	_, err := driver.Decide(&st, &r, time.Nanosecond, 0)
	assert.ErrorIs(t, err, driver.ErrNoLeases)

	r.Lease = ""
	assert.ErrorIs(t, r.Validate(), driver.ErrNoLease)
	r = capped("a", 1)
	r.LeaseTTL = time.Millisecond
	assert.ErrorIs(t, r.Validate(), driver.ErrInvalidLeaseTTL)
	r.LeaseTTL = 0
	assert.NoError(t, r.Validate(), "LeaseTTL 0: DefaultLeaseTTL")
	assert.Equal(t, driver.Ticks(driver.DefaultLeaseTTL, time.Microsecond), r.LeaseTTLTicks(time.Microsecond))
	r.Limit.Inflight = -1
	assert.ErrorIs(t, r.Validate(), driver.ErrInvalidLimit)
}

func TestLeaseIDs(t *testing.T) {
	g, h := driver.NewLeaseIDs(), driver.NewLeaseIDs()
	seen := map[driver.LeaseID]bool{}
	for i := range 1000 {
		for _, id := range []driver.LeaseID{g.Next(), h.Next(), driver.NewLeaseID()} {
			require.False(t, seen[id], "lease ID %q made twice (round %d)", id, i)
			seen[id] = true
		}
	}
}
