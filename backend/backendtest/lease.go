package backendtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The lease guarantees (guarantee 12): a capped limit's admissions hold
// leases, at most Inflight of a key's at once, taken atomically with the
// rate; a lease lasts its time to live unless renewed or released, and
// releasing never frees another holder's.

// leaseBackend returns b as a LeaseBackend, or skips t.
func leaseBackend(t *testing.T, b driver.Backend) driver.LeaseBackend {
	t.Helper()
	lb, ok := b.(driver.LeaseBackend)
	if !ok {
		t.Skip("backend does not implement driver.LeaseBackend")
	}
	return lb
}

// Leased returns a request of cost 1 for key under lim that takes the
// lease id for ttl (0: driver.DefaultLeaseTTL), for backends' lease tests.
func Leased(key string, lim bucket.Limit, id string, ttl time.Duration) driver.Request {
	r := req(key, lim, 1, 0)
	r.Lease, r.LeaseTTL = driver.LeaseID(id), ttl
	return r
}

// LeaseRefs returns the leases ids of key, for Renew and Release.
func LeaseRefs(key string, ids ...string) []driver.LeaseRef {
	refs := make([]driver.LeaseRef, len(ids))
	for i, id := range ids {
		refs[i] = driver.LeaseRef{Key: key, ID: driver.LeaseID(id)}
	}
	return refs
}

func release(t *testing.T, b driver.LeaseBackend, key string, ids ...string) {
	t.Helper()
	require.NoError(t, b.Release(context.Background(), LeaseRefs(key, ids...)), "Release(%q, %v)", key, ids)
}

// testLeasesUnsupported: a backend that keeps no leases refuses a capped
// limit's request with ErrNoLeases rather than admit it uncapped.
func (s *suite) testLeasesUnsupported(t *testing.T) {
	b := s.cfg.New(t)
	if _, ok := b.(driver.LeaseBackend); ok {
		t.Skip("backend implements driver.LeaseBackend")
	}
	r := Leased(s.key(t, "k"), bucket.PerSecond(10).WithInflight(1), "a", 0)
	_, err := b.Admit(context.Background(), r)
	assert.ErrorIs(t, err, driver.ErrNoLeases, call(r))
}

// testLeaseValidation: a capped request needs a lease ID and a time to
// live in range; Renew needs a time to live in range.
func (s *suite) testLeaseValidation(t *testing.T) {
	b := leaseBackend(t, s.cfg.New(t))
	key := s.key(t, "k")
	lim := bucket.PerSecond(10).WithInflight(2)
	for _, tt := range []struct {
		r    driver.Request
		want error
	}{
		{Leased(key, lim, "", 0), driver.ErrNoLease},
		{Leased(key, lim, "a", time.Millisecond), driver.ErrInvalidLeaseTTL},
		{Leased(key, lim, "a", -time.Second), driver.ErrInvalidLeaseTTL},
		{Leased(key, bucket.PerSecond(10).WithInflight(-1), "a", 0), driver.ErrInvalidLimit},
		{Leased(key, bucket.PerSecond(10).WithInflight(driver.MaxInflight+1), "a", 0), driver.ErrInvalidLimit},
	} {
		_, err := b.Admit(context.Background(), tt.r)
		assert.ErrorIs(t, err, tt.want, "%s, lease %q, ttl %v", call(tt.r), tt.r.Lease, tt.r.LeaseTTL)
	}
	_, err := b.Renew(context.Background(), []driver.LeaseRef{{Key: key, ID: "a"}}, 0)
	assert.ErrorIs(t, err, driver.ErrInvalidLeaseTTL, "Renew with ttl 0")
}

// testLeaseCap: at most Inflight leases of a key are held; a holder
// asking again keeps its one; a refusal at the cap charges nothing (the
// burst is spent by admissions only); a released lease lets the next in;
// releasing twice frees nothing more; another key has its own cap.
func (s *suite) testLeaseCap(t *testing.T) {
	b := leaseBackend(t, s.cfg.New(t))
	peer := leaseBackend(t, s.peer(t, b))
	key, other := s.key(t, "k"), s.key(t, "other")
	lim := bucket.PerHour(1).WithBurst(4).WithInflight(2)

	for _, id := range []string{"a", "b"} {
		require.True(t, admit(t, b, Leased(key, lim, id, 0)).Allowed, "lease %q under the cap refused", id)
	}
	d := admit(t, peer, Leased(key, lim, "c", 0))
	require.False(t, d.Allowed, "third lease with inflight=2 allowed")
	assert.True(t, d.AtCap, "refusal at the cap: AtCap")
	assert.Positive(t, d.Wait, "refusal at the cap: Wait")
	assert.LessOrEqual(t, d.Wait, driver.DefaultLeaseTTL, "refusal at the cap: Wait, at most the leases' time to live")
	assert.True(t, admit(t, b, Leased(other, lim, "c", 0)).Allowed, "another key's first lease")

	release(t, peer, key, "a")
	require.True(t, admit(t, b, Leased(key, lim, "c", 0)).Allowed, "lease after a release refused")
	release(t, b, key, "a") // again: frees nothing
	d = admit(t, b, Leased(key, lim, "d", 0))
	require.False(t, d.Allowed, "lease allowed after a second release of the same lease")
	assert.True(t, d.AtCap, "refusal at the cap after a second release: AtCap")

	release(t, b, key, "b")
	require.True(t, admit(t, b, Leased(key, lim, "d", 0)).Allowed, "fourth admission (burst 4) refused: a refusal at the cap charged the rate")
	release(t, b, key, "c")
	d = admit(t, b, Leased(key, lim, "e", 0))
	assert.False(t, d.Allowed, "fifth admission of burst 4 within the hour")
	assert.False(t, d.AtCap, "refusal on the rate with a place free: AtCap")
}

// testLeaseRateRefusal: a refusal on the rate takes no lease; a refund
// releases the admission's lease.
func (s *suite) testLeaseRateRefusal(t *testing.T) {
	b := leaseBackend(t, s.cfg.New(t))
	key := s.key(t, "k")
	lim := bucket.PerSecond(1).WithInflight(1)
	a := admit(t, b, Leased(key, lim, "a", 0))
	require.True(t, a.Allowed)
	release(t, b, key, "a")
	d := admit(t, b, Leased(key, lim, "b", 0))
	require.False(t, d.Allowed, "second admission of 1/s at once")
	require.False(t, d.AtCap, "refusal on the rate: AtCap")
	r := Leased(key, lim, "c", 0)
	r.MaxWait = 5 * time.Second
	c := admit(t, b, r)
	require.True(t, c.Allowed, "booked admission refused: the rate refusal took the only lease")
	refund(t, b, r, c)
	r.Lease = "d"
	d = admit(t, b, r)
	assert.True(t, d.Allowed, "booked admission after a refund refused (at the cap: %v): the refund kept the lease", d.AtCap)
}

// testLeaseExpiry: a lease neither renewed nor released is held for its
// time to live, by the backend's clock, then lets another in; its holder
// releasing it then frees nothing of the new holder's, and renewing it
// reports it lost; a renewal keeps a lease past its first time to live.
func (s *suite) testLeaseExpiry(t *testing.T) {
	b := leaseBackend(t, s.cfg.New(t))
	peer := leaseBackend(t, s.peer(t, b))
	key, renewed := s.key(t, "k"), s.key(t, "renewed")
	lim := bucket.PerSecond(1000).WithBurst(1000).WithInflight(1)
	const ttl = 100 * time.Millisecond

	// r before a: r's lease is checked after a's expired, so after r's
	// first time to live whatever the admissions took.
	r := admit(t, b, Leased(renewed, lim, "r", ttl))
	require.True(t, r.Allowed)
	a := admit(t, b, Leased(key, lim, "a", ttl))
	require.True(t, a.Allowed)
	lost, err := b.Renew(context.Background(), []driver.LeaseRef{{Key: renewed, ID: "r"}}, time.Hour)
	require.NoError(t, err)
	require.Empty(t, lost, "Renew of a held lease")

	d := pollAdmit(t, peer, Leased(key, lim, "b", ttl))
	assert.GreaterOrEqual(t, time.Duration(d.Now-a.Now), ttl, "a lease of %v taken at %d let another in at %d (backend clock)", ttl, a.Now, d.Now)

	release(t, b, key, "a") // expired, and its place taken: frees nothing
	c := admit(t, b, Leased(key, lim, "c", ttl))
	assert.False(t, c.Allowed, "lease allowed after the expired holder released its lease: it freed the new holder's")
	lost, err = b.Renew(context.Background(), []driver.LeaseRef{{Key: key, ID: "a"}, {Key: key, ID: "b"}}, ttl)
	require.NoError(t, err)
	assert.Equal(t, []driver.LeaseRef{{Key: key, ID: "a"}}, lost, "Renew of an expired lease and of a held one")

	x := admit(t, b, Leased(renewed, lim, "x", ttl))
	assert.False(t, x.Allowed, "lease renewed for an hour let another in %v after it was taken", time.Duration(x.Now-r.Now))
	assert.GreaterOrEqual(t, time.Duration(x.Now-r.Now), ttl, "the renewed lease was checked after its first time to live")
}

// pollAdmit asks for r until it is admitted, within a deadline generous
// for slow machines.
func pollAdmit(t *testing.T, b driver.Backend, r driver.Request) driver.Decision {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := admit(t, b, r)
		if d.Allowed {
			return d
		}
		require.False(t, time.Now().After(deadline), "%s still refused after 10s", call(r))
		time.Sleep(5 * time.Millisecond)
	}
}

// testLeaseBatch: a batch of capped requests is decided in order: the
// first Inflight are admitted, the rest refused at the cap.
func (s *suite) testLeaseBatch(t *testing.T) {
	b := s.cfg.New(t)
	leaseBackend(t, b)
	bb, ok := b.(driver.BatchBackend)
	if !ok {
		t.Skip("backend does not implement driver.BatchBackend")
	}
	key := s.key(t, "k")
	lim := bucket.PerHour(100).WithBurst(100).WithInflight(3)
	batch := make([]driver.Admission, 6)
	for i := range batch {
		batch[i].Request = Leased(key, lim, fmt.Sprint("l", i), 0)
	}
	bb.AdmitBatch(context.Background(), batch)
	var allowed, atCap []int
	for i, a := range batch {
		require.NoError(t, a.Err, "batch[%d]", i)
		if a.Decision.Allowed {
			allowed = append(allowed, i)
		} else if a.Decision.AtCap {
			atCap = append(atCap, i)
		}
	}
	assert.Equal(t, []int{0, 1, 2}, allowed, "admitted in the batch")
	assert.Equal(t, []int{3, 4, 5}, atCap, "refused at the cap in the batch")
}

// testLeaseConcurrent: holders on both handles take, hold and release
// leases of one key as fast as they can; the intervals they report —
// from the admission's answer to just before the release, each inside its
// lease — never overlap more than Inflight deep.
func (s *suite) testLeaseConcurrent(t *testing.T) {
	b := leaseBackend(t, s.cfg.New(t))
	peer := leaseBackend(t, s.peer(t, b))
	const (
		cap     = 3
		holders = 8
		grants  = 400
	)
	key := s.key(t, "k")
	lim := bucket.PerSecond(1_000_000).WithBurst(1_000_000).WithInflight(cap)
	var (
		mu    sync.Mutex
		spans []Interval
	)
	deadline := time.Now().Add(20 * time.Second)
	g, ctx := errgroup.WithContext(context.Background())
	for h := range holders {
		be := b
		if h%2 == 1 {
			be = peer
		}
		g.Go(func() error {
			for n := 0; ; n++ {
				mu.Lock()
				done := len(spans) >= grants
				mu.Unlock()
				if done || time.Now().After(deadline) {
					return nil
				}
				r := Leased(key, lim, fmt.Sprintf("h%d.%d", h, n), 0)
				d, err := be.Admit(ctx, r)
				if err != nil {
					return fmt.Errorf("%s: %w", call(r), err)
				}
				if !d.Allowed {
					continue
				}
				from := time.Now()
				time.Sleep(time.Duration(n%3) * 100 * time.Microsecond) // the work
				to := time.Now()
				if err := be.Release(ctx, []driver.LeaseRef{{Key: key, ID: r.Lease}}); err != nil {
					return fmt.Errorf("Release(%q, %q): %w", key, r.Lease, err)
				}
				mu.Lock()
				spans = append(spans, Interval{From: from, To: to})
				mu.Unlock()
			}
		})
	}
	require.NoError(t, g.Wait())
	assert.GreaterOrEqual(t, len(spans), grants/4, "leases granted, too few for a meaningful check")
	assert.NoError(t, CheckInflight(cap, spans))
}

// An Interval is when one holder held a lease, by its own clock: from
// the admission's answer to just before it released the lease, which
// lies within the lease.
type Interval struct {
	From, To time.Time
}

// CheckInflight returns an error if more than cap of the intervals
// overlap at any instant: the reference check of an inflight cap, for
// holders in one process or on one host's clock.
func CheckInflight(cap int, spans []Interval) error {
	type edge struct {
		at   time.Time
		open int // +1 at a start, -1 at an end
	}
	edges := make([]edge, 0, 2*len(spans))
	for _, s := range spans {
		edges = append(edges, edge{s.From, +1}, edge{s.To, -1})
	}
	// At one instant ends come first: a holder that released just as
	// another took the place did not overlap it.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.open - b.open
	})
	depth, peak := 0, 0
	var at time.Time
	for _, e := range edges {
		if depth += e.open; depth > peak {
			peak, at = depth, e.at
		}
	}
	if peak > cap {
		return fmt.Errorf("%d holders at once at %s, cap %d", peak, at.Format(time.RFC3339Nano), cap)
	}
	return nil
}

// testLeaseIdle: a key is kept while a lease of it is held, and forgotten
// once it is released and the bucket fresh.
func (s *suite) testLeaseIdle(t *testing.T) {
	if s.cfg.Forgotten == nil {
		t.Skip("Config.Forgotten not set")
	}
	b := leaseBackend(t, s.cfg.New(t))
	held, released := s.key(t, "held"), s.key(t, "released")
	lim := bucket.Every(10*time.Millisecond, 1).WithInflight(1)
	require.True(t, admit(t, b, Leased(held, lim, "a", time.Hour)).Allowed)
	require.True(t, admit(t, b, Leased(released, lim, "a", time.Hour)).Allowed)
	release(t, b, released, "a")
	deadline := time.Now().Add(10 * time.Second)
	for !s.cfg.Forgotten(t, b, released) {
		require.False(t, time.Now().After(deadline), "key with its lease released still held 10s after its bucket became fresh")
		time.Sleep(20 * time.Millisecond)
	}
	assert.False(t, s.cfg.Forgotten(t, b, held), "key with a lease held for an hour was forgotten")
	d := admit(t, b, Leased(held, lim, "b", time.Hour))
	assert.True(t, d.AtCap, "the held key's lease was lost: another was admitted")
}
