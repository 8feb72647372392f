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
)

// TestParity feeds the same random sequences of admissions, refunds,
// pauses and clock steps to driver.Decide, Refund and Pause in Go and to
// the PL/pgSQL function on a fake clock, and requires identical
// decisions, bookings and fresh moments: the function is the mathematics
// of bucket/driver, in microseconds.
func TestParity(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	count := map[string]int{}
	defer func() { t.Logf("function calls: %v", count) }()
	sequences, steps := 60, 100
	if testing.Short() {
		sequences = 20
	}
	for seq := range sequences {
		rng := rand.New(rand.NewPCG(uint64(seq), 7))
		key := fmt.Sprint("parity-", seq)
		limits := []bucket.Limit{randomLimit(rng), randomLimit(rng), randomLimit(rng)}
		// Quotas sharing windows across limits exercise matching by window.
		if len(limits[0].Quotas) > 0 && len(limits[1].Quotas) > 0 {
			w := limits[0].Quotas[0].Window
			if !slices.ContainsFunc(limits[1].Quotas, func(q bucket.Quota) bool { return q.Window == w }) {
				limits[1].Quotas[len(limits[1].Quotas)-1].Window = w
			}
		}
		now := 1_700_000_000_000_000 + rng.Int64N(1e12) // µs, the fake clock both sides share
		var (
			st      driver.State
			booked  []booking
			limitAt = 0
		)
		for step := range steps {
			where := fmt.Sprintf("sequence %d step %d (now %d)", seq, step, now)
			if rng.IntN(25) == 0 {
				limitAt = rng.IntN(len(limits))
			}
			lim := limits[limitAt]
			if driver.FreshAt(&st) <= now {
				st = driver.State{} // forgotten, as the database forgets it
			}
			var goFresh, sqlFresh int64
			switch p := rng.IntN(100); {
			case p < 70:
				req := driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(maxCost(lim)), MaxWait: randomWait(rng, lim)}
				want, err := driver.Decide(&st, &req, time.Microsecond, now)
				require.NoError(t, err, "%s: Decide", where)
				got, fresh, err := pgstore.RawAdmit(ctx, s, req, &now)
				require.NoError(t, err, "%s: function admit", where)
				require.Equal(t, want, got, "%s: Admit(%v, cost %d, maxWait %v): Go's decision (expected), the function's (actual)", where, lim, req.Cost, req.MaxWait)
				if want.Allowed {
					booked = append(booked, booking{req, want})
					count["allowed"]++
					if want.Wait > 0 {
						count["booked ahead"]++
					}
				} else {
					count["refused"]++
				}
				for _, q := range st.Quotas {
					if len(q.Slots) > 1 {
						count["quota slots in use"]++
						break
					}
				}
				goFresh, sqlFresh = driver.FreshAt(&st), fresh
			case p < 85 && len(booked) > 0:
				b := booked[rng.IntN(len(booked))]
				driver.Refund(&st, &b.req, b.d, time.Microsecond)
				count["refunds"]++
				fresh, err := pgstore.RawRefund(ctx, s, b.req, b.d, &now)
				require.NoError(t, err, "%s: function refund", where)
				goFresh, sqlFresh = driver.FreshAt(&st), fresh
			case p < 92:
				d := time.Duration(rng.Int64N(int64(2 * time.Second)))
				driver.Pause(&st, now+(int64(d)+999)/1000)
				fresh, err := pgstore.RawPause(ctx, s, key, d, &now)
				require.NoError(t, err, "%s: function pause", where)
				goFresh, sqlFresh = driver.FreshAt(&st), fresh
			default:
				goFresh, sqlFresh = driver.FreshAt(&st), driver.FreshAt(&st)
			}
			// The database forgets a bucket once it is fresh; so does the Go side.
			if goFresh <= now {
				goFresh, st = 0, driver.State{}
			}
			if sqlFresh <= now {
				sqlFresh = 0
			}
			require.Equal(t, goFresh, sqlFresh, "%s: state fresh at, in Go (expected) and in the function (actual)", where)
			now += randomStep(rng, lim)
		}
	}
}

type booking struct {
	req driver.Request
	d   driver.Decision
}

// randomLimit returns a limit with a rate from 1/10s to 1000/ms, periods
// that are not whole microseconds, bursts up to 20 and up to 3 quotas.
func randomLimit(rng *rand.Rand) bucket.Limit {
	periods := []time.Duration{time.Millisecond, 10 * time.Millisecond, time.Second, 10 * time.Second, 1234567, 999}
	lim := bucket.Every(periods[rng.IntN(len(periods))], 1+rng.Int64N(1000)).WithBurst(1 + rng.Int64N(20))
	windows := []time.Duration{time.Millisecond, 50 * time.Millisecond, 250 * time.Millisecond, time.Second, 7 * time.Second, time.Hour, 100_001}
	rng.Shuffle(len(windows), func(i, j int) { windows[i], windows[j] = windows[j], windows[i] })
	for i := range rng.IntN(4) {
		lim = lim.WithQuota(1+rng.Int64N(60), windows[i])
	}
	return lim
}

func maxCost(lim bucket.Limit) int64 {
	c := lim.Burst
	for _, q := range lim.Quotas {
		c = min(c, q.Max)
	}
	return min(c, 3)
}

func randomWait(rng *rand.Rand, lim bucket.Limit) time.Duration {
	switch rng.IntN(5) {
	case 0:
		return 0
	case 1:
		return -time.Second
	case 2:
		return time.Duration(rng.Int64N(int64(10 * lim.Interval())))
	}
	return time.Duration(rng.Int64N(int64(2 * time.Second)))
}

// randomStep advances the clock by nothing, a fraction of the emission
// interval, a few intervals, or past the longest window.
func randomStep(rng *rand.Rand, lim bucket.Limit) int64 {
	t := max(int64(lim.Interval()/time.Microsecond), 1)
	switch rng.IntN(10) {
	case 0:
		return 0
	case 1:
		return rng.Int64N(2 * int64(time.Hour/time.Microsecond))
	case 2, 3:
		return rng.Int64N(1000)
	}
	return rng.Int64N(3 * t)
}

// TestParityBatch: one statement decides many requests, of several keys
// (each key several times, not one after another) with quotas of
// different shapes. Every decision matches driver.Decide run on the
// requests in batch order.
func TestParityBatch(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 9))
	keys := []string{"batch-d", "batch-a", "batch-c", "batch-b"}
	limits := map[string]bucket.Limit{}
	states := map[string]*driver.State{}
	for _, k := range keys {
		limits[k] = randomLimit(rng)
		states[k] = new(driver.State)
	}
	now := int64(1_700_000_000_000_000)
	var allowed, sized int
	for round := range 40 {
		batch := make([]driver.Admission, 1+rng.IntN(150))
		for i := range batch {
			k := keys[rng.IntN(len(keys))]
			lim := limits[k]
			batch[i].Request = driver.Request{Key: k, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(maxCost(lim)), MaxWait: randomWait(rng, lim)}
		}
		require.NoError(t, pgstore.AdmitBatchAt(ctx, s, batch, now), "round %d", round)
		for i, a := range batch {
			st := states[a.Key]
			if driver.FreshAt(st) <= now {
				*st = driver.State{}
			}
			want, err := driver.Decide(st, &a.Request, time.Microsecond, now)
			require.NoError(t, err, "round %d batch[%d]: Decide", round, i)
			require.Equal(t, want, a.Decision, "round %d batch[%d] (%s, %v, cost %d): Go's decision (expected), the batch's (actual)", round, i, a.Key, a.Limit, a.Cost)
			if want.Allowed {
				allowed++
			}
		}
		sized += len(batch)
		now += rng.Int64N(200_000)
	}
	require.True(t, allowed > 0 && allowed < sized, "%d of %d admitted: the test exercised only one outcome", allowed, sized)
}

// TestParityBatchDistinct: batches of admissions without quotas, one per
// key, which the function decides in one statement rather than its loop,
// match driver.Decide too, on keys with and without a stored state, some
// of whose states hold quotas that a limit without quotas drops.
func TestParityBatchDistinct(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(5, 11))
	keys := make([]string, 60)
	limits := map[string]bucket.Limit{}
	states := map[string]*driver.State{}
	now := int64(1_700_000_000_000_000)
	for i := range keys {
		keys[i] = fmt.Sprint("distinct-", i)
		k := keys[i]
		for {
			limits[k] = randomLimit(rng)
			if len(limits[k].Quotas) == 0 {
				break
			}
		}
		states[k] = new(driver.State)
		if i%3 == 0 { // a state with quotas, from an earlier limit
			req := driver.Request{Key: k, Limit: backendtest.Limit(limits[k].WithQuota(5, time.Hour)), Cost: 1, MaxWait: time.Second}
			want, err := driver.Decide(states[k], &req, time.Microsecond, now)
			require.NoError(t, err)
			got, _, err := pgstore.RawAdmit(ctx, s, req, &now)
			require.NoError(t, err)
			require.Equal(t, want, got, "admission with a quota of %s", k)
		}
	}
	var allowed, sized int
	for round := range 40 {
		ks := slices.Clone(keys)
		rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
		batch := make([]driver.Admission, 1+rng.IntN(len(ks)))
		for i := range batch {
			lim := limits[ks[i]]
			batch[i].Request = driver.Request{Key: ks[i], Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(maxCost(lim)), MaxWait: randomWait(rng, lim)}
		}
		require.NoError(t, pgstore.AdmitBatchAt(ctx, s, batch, now), "round %d", round)
		for i, a := range batch {
			st := states[a.Key]
			if driver.FreshAt(st) <= now {
				*st = driver.State{}
			}
			want, err := driver.Decide(st, &a.Request, time.Microsecond, now)
			require.NoError(t, err, "round %d batch[%d]: Decide", round, i)
			require.Equal(t, want, a.Decision, "round %d batch[%d] (%s, %v, cost %d): Go's decision (expected), the batch's (actual)", round, i, a.Key, a.Limit, a.Cost)
			if want.Allowed {
				allowed++
			}
		}
		sized += len(batch)
		now += rng.Int64N(300_000)
	}
	require.True(t, allowed > 0 && allowed < sized, "%d of %d admitted: the test exercised only one outcome", allowed, sized)
}
