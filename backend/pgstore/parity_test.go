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

// TestParity feeds the same random sequences of admissions, refunds,
// pauses, learned feedback and clock steps to driver.Decide, Refund,
// Pause and Learn in Go and to the PL/pgSQL function on a fake clock, and
// requires identical decisions (the interval applied included), bookings,
// learned intervals and fresh moments: the function is the mathematics of
// bucket/driver, in microseconds.
func TestParity(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	sequences := 60
	if testing.Short() {
		sequences = 20
	}
	paritytest.Sequences(t, paritytest.Target{
		Admit: func(req driver.Request, now int64) (driver.Decision, int64, error) {
			return pgstore.RawAdmit(ctx, s, req, &now)
		},
		Refund: func(req driver.Request, d driver.Decision, now int64) (int64, error) {
			return pgstore.RawRefund(ctx, s, req, d, &now)
		},
		Pause: func(key string, d time.Duration, now int64) (int64, error) {
			return pgstore.RawPause(ctx, s, key, d, &now)
		},
		Learn: func(key string, lim driver.Limit, fb driver.Feedback, now int64) (time.Duration, int64, error) {
			return pgstore.RawLearn(ctx, s, key, lim, fb, &now)
		},
	}, sequences, 100)
}

// TestParityBatch: one statement decides many requests, of several keys
// (each key several times, not one after another) with quotas of
// different shapes, as driver.Decide does in batch order.
func TestParityBatch(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	paritytest.Batches(t, func(batch []driver.Admission, now int64) error {
		return pgstore.AdmitBatchAt(context.Background(), s, batch, now)
	})
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
			limits[k] = paritytest.RandomLimit(rng)
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
			batch[i].Request = driver.Request{Key: ks[i], Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(paritytest.MaxCost(lim)), MaxWait: paritytest.RandomWait(rng, lim)}
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
