package pgstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/paritytest"
)

// TestParityLeases feeds the same random sequences of capped and uncapped
// admissions, refunds, pauses, renewals, releases, limit changes and
// clock steps to driver.DecideLeased (with Refund, ReleaseLeased and
// Leases' Renew and Release) in Go and to the PL/pgSQL function on a fake
// clock, and requires identical decisions (AtCap and its wait included),
// renewals and fresh moments: the function keeps leases as memstore
// does, and forgets a key when its bucket is fresh and no lease of it is
// held. Each sequence is one key, a request per statement.
func TestParityLeases(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	sequences := 60
	if testing.Short() {
		sequences = 20
	}
	count := map[string]int{}
	for seq := range sequences {
		rng := rand.New(rand.NewPCG(uint64(seq), 17))
		p := newLeaseParity(t, s, rng, []string{fmt.Sprint("lease-parity-", seq)}, count)
		for step := range 150 {
			p.batch(fmt.Sprintf("sequence %d step %d", seq, step), 1)
			p.now += paritytest.RandomStep(rng, p.limits[p.keys[0]][0])
		}
	}
	t.Logf("calls: %v", count)
	p := leaseParity{count: count}
	p.exercised(t)
}

// TestParityLeasesBatch: one statement decides many requests of a few
// keys, mixing admissions, refunds, renewals, releases and pauses, as
// the Go model does in batch order.
func TestParityLeasesBatch(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	rng := rand.New(rand.NewPCG(7, 23))
	count := map[string]int{}
	p := newLeaseParity(t, s, rng, []string{"lease-batch-b", "lease-batch-a", "lease-batch-c"}, count)
	for round := range 60 {
		p.batch(fmt.Sprintf("round %d", round), 1+rng.IntN(40))
		p.now += rng.Int64N(300_000)
	}
	t.Logf("calls: %v", count)
	p.exercised(t)
}

// TestParityLeasesDistinct: batches of admissions without quotas, one per
// key, capped or not, which the function decides in one statement rather
// than its loop, match the Go model too, between statements of
// renewals, releases and refunds.
func TestParityLeasesDistinct(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	rng := rand.New(rand.NewPCG(5, 29))
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprint("lease-distinct-", i)
	}
	count := map[string]int{}
	p := newLeaseParity(t, s, rng, keys, count)
	for _, k := range keys {
		// Two capped limits without quotas, and one uncapped with a quota,
		// which leaves a state with quotas that the others drop, but not
		// when refused at the cap.
		for i := range p.limits[k] {
			lim := paritytest.RandomLimit(rng)
			lim.Quotas = nil
			if i < 2 {
				lim = lim.WithInflight(1 + rng.Int64N(3))
			} else {
				lim = lim.WithQuota(100, time.Hour)
			}
			p.limits[k][i] = lim
		}
	}
	for round := range 80 {
		ks := slices.Clone(keys)
		rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
		calls := make([]leaseCall, 1+rng.IntN(len(ks)))
		for i := range calls {
			lim := p.limits[ks[i]][0]
			req := driver.Request{Key: ks[i], Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(paritytest.MaxCost(lim)), MaxWait: paritytest.RandomWait(rng, lim)}
			if lim.Inflight > 0 {
				req.Lease = driver.LeaseID(fmt.Sprint("l", rng.IntN(4)))
				req.LeaseTTL = []time.Duration{0, driver.MinLeaseTTL, 300 * time.Millisecond}[rng.IntN(3)]
			}
			calls[i] = p.admit(req)
		}
		p.check(fmt.Sprintf("round %d", round), calls...)
		if rng.IntN(2) == 0 {
			p.batch(fmt.Sprintf("round %d, mixed", round), 1+rng.IntN(10))
		}
		for _, k := range ks[:rng.IntN(4)] { // limits change
			lims := p.limits[k]
			lims[0], lims[1+rng.IntN(2)] = lims[1+rng.IntN(2)], lims[0]
		}
		p.now += rng.Int64N(200_000)
	}
	t.Logf("calls: %v", count)
	p.exercised(t)
}

// leaseParity runs statements on the Store and their requests on a Go
// model of each key: the State and Leases memstore keeps, forgotten
// together once the bucket is fresh and no lease is held.
type leaseParity struct {
	t      *testing.T
	s      *pgstore.Store
	rng    *rand.Rand
	keys   []string
	limits map[string][]bucket.Limit // a key's limits: its first, and others it changes to
	st     map[string]*driver.State
	ls     map[string]*driver.Leases
	booked []leaseBooking
	now    int64 // µs, the fake clock both sides share
	count  map[string]int
}

type leaseBooking struct {
	req driver.Request
	d   driver.Decision
}

func newLeaseParity(t *testing.T, s *pgstore.Store, rng *rand.Rand, keys []string, count map[string]int) *leaseParity {
	p := &leaseParity{
		t: t, s: s, rng: rng, keys: keys, count: count,
		limits: map[string][]bucket.Limit{},
		st:     map[string]*driver.State{},
		ls:     map[string]*driver.Leases{},
		now:    1_700_000_000_000_000 + rng.Int64N(1e12),
	}
	for _, k := range keys {
		for i := range 3 {
			lim := paritytest.RandomLimit(rng)
			if i < 2 { // a key is mostly capped, and sometimes not
				lim = lim.WithInflight(1 + rng.Int64N(3))
			}
			p.limits[k] = append(p.limits[k], lim)
		}
		p.st[k], p.ls[k] = new(driver.State), new(driver.Leases)
	}
	return p
}

// A leaseCall is one request: what the statement receives, and what the
// model does with it, returning the expected decision.
type leaseCall struct {
	op   pgstore.RawOp
	key  string
	kind string
	want func() driver.Decision
	what string
}

// batch sends n random requests in one statement and checks each answer
// against the model's.
func (p *leaseParity) batch(where string, n int) {
	p.t.Helper()
	calls := make([]leaseCall, n)
	for i := range calls {
		calls[i] = p.randomCall()
	}
	p.check(where, calls...)
}

// check sends calls in one statement at p.now and checks each answer
// against the model's.
func (p *leaseParity) check(where string, calls ...leaseCall) {
	p.t.Helper()
	n := len(calls)
	ops := make([]pgstore.RawOp, n)
	for i, c := range calls {
		ops[i] = c.op
	}
	got, gotFresh, err := pgstore.RunAt(context.Background(), p.s, ops, p.now)
	require.NoError(p.t, err, "%s: the statement", where)
	for i, c := range calls {
		at := fmt.Sprintf("%s request %d (now %d): %s", where, i, p.now, c.what)
		st, ls := p.state(c.key)
		want := c.want()
		p.count[c.kind]++
		switch c.kind {
		case "admit":
			require.Equal(p.t, want, got[i], "%s: Go's decision (expected), the function's (actual)", at)
			switch {
			case want.Allowed:
				p.count["allowed"]++
			case want.AtCap:
				p.count["at cap"]++
			default:
				p.count["refused on the rate"]++
			}
		case "renew":
			require.Equal(p.t, want.Allowed, got[i].Allowed, "%s: renewed, in Go (expected) and by the function (actual)", at)
			if want.Allowed {
				p.count["renewed"]++
			}
		}
		wantFresh := max(driver.FreshAt(st), ls.FreshAt())
		if wantFresh <= p.now {
			wantFresh, *st, *ls = 0, driver.State{}, driver.Leases{}
		}
		require.Equal(p.t, wantFresh, gotFresh[i], "%s: key fresh at, in Go (expected) and in the function (actual)", at)
	}
}

// state returns key's model, forgotten first if it is fresh at now.
func (p *leaseParity) state(key string) (*driver.State, *driver.Leases) {
	st, ls := p.st[key], p.ls[key]
	if max(driver.FreshAt(st), ls.FreshAt()) <= p.now {
		*st, *ls = driver.State{}, driver.Leases{}
	}
	return st, ls
}

func (p *leaseParity) randomCall() leaseCall {
	rng := p.rng
	key := p.keys[rng.IntN(len(p.keys))]
	lims := p.limits[key]
	if rng.IntN(20) == 0 {
		lims[0], lims[1+rng.IntN(2)] = lims[1+rng.IntN(2)], lims[0] // the limit changes
	}
	lim := lims[0]
	lease := fmt.Sprint("l", rng.IntN(5))
	// Few times to live, so that leases of a batch often expire at one
	// time, and some that are no whole microseconds.
	ttl := []time.Duration{driver.MinLeaseTTL, 20 * time.Millisecond, time.Second, 2*time.Second + 1}[rng.IntN(4)]
	if rng.IntN(4) == 0 {
		ttl = time.Duration(rng.Int64N(int64(2*time.Second))) + driver.MinLeaseTTL
	}
	switch r := rng.IntN(100); {
	case r < 12 && len(p.booked) > 0:
		return p.refund(p.booked[rng.IntN(len(p.booked))])
	case r < 17:
		return p.pause(key, time.Duration(rng.Int64N(int64(2*time.Second))))
	case r < 30:
		return p.release(key, lease)
	case r < 43:
		return p.renew(key, lease, ttl)
	}
	req := driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(paritytest.MaxCost(lim)), MaxWait: paritytest.RandomWait(rng, lim)}
	if lim.Inflight > 0 {
		req.Lease = driver.LeaseID(lease)
		if rng.IntN(4) > 0 {
			req.LeaseTTL = ttl
		}
	}
	return p.admit(req)
}

func (p *leaseParity) admit(req driver.Request) leaseCall {
	now := p.now
	return leaseCall{pgstore.AdmitOp(req), req.Key, "admit", func() driver.Decision {
		st, ls := p.state(req.Key)
		d, err := driver.DecideLeased(st, ls, &req, time.Microsecond, now)
		require.NoError(p.t, err, "DecideLeased")
		if d.Allowed {
			p.booked = append(p.booked, leaseBooking{req, d})
		}
		return d
	}, fmt.Sprintf("Admit(%s, %v, cost %d, maxWait %v, lease %q, ttl %v)", req.Key, req.Limit, req.Cost, req.MaxWait, req.Lease, req.LeaseTTL)}
}

func (p *leaseParity) refund(b leaseBooking) leaseCall {
	return leaseCall{pgstore.RefundOp(b.req, b.d), b.req.Key, "refund", func() driver.Decision {
		st, ls := p.state(b.req.Key)
		driver.Refund(st, &b.req, b.d, time.Microsecond)
		driver.ReleaseLeased(ls, &b.req)
		return driver.Decision{}
	}, fmt.Sprintf("Refund(%s, lease %q)", b.req.Key, b.req.Lease)}
}

func (p *leaseParity) pause(key string, d time.Duration) leaseCall {
	now := p.now
	return leaseCall{pgstore.PauseOp(key, d), key, "pause", func() driver.Decision {
		st, _ := p.state(key)
		driver.Pause(st, now+driver.Ticks(d, time.Microsecond))
		return driver.Decision{}
	}, fmt.Sprintf("Pause(%s, %v)", key, d)}
}

func (p *leaseParity) release(key, lease string) leaseCall {
	return leaseCall{pgstore.ReleaseOp(driver.LeaseRef{Key: key, ID: driver.LeaseID(lease)}), key, "release", func() driver.Decision {
		_, ls := p.state(key)
		ls.Release(driver.LeaseID(lease))
		return driver.Decision{}
	}, fmt.Sprintf("Release(%s, %q)", key, lease)}
}

func (p *leaseParity) renew(key, lease string, ttl time.Duration) leaseCall {
	now := p.now
	return leaseCall{pgstore.RenewOp(driver.LeaseRef{Key: key, ID: driver.LeaseID(lease)}, ttl), key, "renew", func() driver.Decision {
		_, ls := p.state(key)
		return driver.Decision{Allowed: ls.Renew(driver.LeaseID(lease), now, now+driver.Ticks(ttl, time.Microsecond))}
	}, fmt.Sprintf("Renew(%s, %q, %v)", key, lease, ttl)}
}

// exercised fails the test if an outcome it means to compare never
// happened.
func (p *leaseParity) exercised(t *testing.T) {
	t.Helper()
	for _, c := range []string{"allowed", "at cap", "refused on the rate", "refund", "pause", "release", "renew", "renewed"} {
		require.Positive(t, p.count[c], "%s: never happened, so never compared", c)
	}
	require.Less(t, p.count["renewed"], p.count["renew"], "every renewal found its lease held: lost ones were never compared")
}

// TestParityLeaseTies: leases of a key that expire at one time, because
// one statement took them with one time to live, or a holder took its
// lease twice, or renewed it to the time it had; released one by one,
// the key's latest expiry (and so when it is forgotten) follows, as in
// Go. The function counts the leases at the latest expiry rather than
// look for the next latest at every release: a count one too high kept
// a released lease's expiry.
func TestParityLeaseTies(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	p := newLeaseParity(t, s, rand.New(rand.NewPCG(1, 2)), []string{"ties"}, map[string]int{})
	lim := backendtest.Limit(bucket.PerSecond(1_000_000).WithBurst(1000).WithInflight(5))
	req := func(id string, ttl time.Duration) driver.Request {
		return driver.Request{Key: "ties", Limit: lim, Cost: 1, Lease: driver.LeaseID(id), LeaseTTL: ttl}
	}
	p.check("first", p.admit(req("short", time.Second)))
	p.now += 1000
	p.check("ties",
		p.admit(req("a", 2*time.Second)), p.admit(req("b", 2*time.Second)),
		p.admit(req("a", 2*time.Second)), p.renew("ties", "b", 2*time.Second),
		p.release("ties", "a"), p.release("ties", "b"))
	p.now += 1000
	p.check("renewed to a tie",
		p.admit(req("c", 3*time.Second)), p.renew("ties", "short", 3*time.Second), p.renew("ties", "short", 3*time.Second),
		p.release("ties", "c"), p.release("ties", "short"))
}
