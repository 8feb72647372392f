// Package paritytest checks a backend that runs the mathematics of
// bucket/driver elsewhere (a Lua script in Redis, a PL/pgSQL function in
// PostgreSQL) against driver.Decide, Refund and Pause, on random
// sequences and a fake clock in microseconds.
package paritytest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A Target is the backend under test, deciding at a time it is given
// (µs). Each call returns the moment the key's state becomes fresh, 0 if
// it is.
type Target struct {
	Admit  func(req driver.Request, now int64) (driver.Decision, int64, error)
	Refund func(req driver.Request, d driver.Decision, now int64) (int64, error)
	Pause  func(key string, d time.Duration, now int64) (int64, error)
	// Learn, if set, learns fb for key under lim (a driver.LearnBackend)
	// and returns the interval the key applies from now; Sequences then
	// gives some limits a floor and learns from random feedback.
	Learn func(key string, lim driver.Limit, fb driver.Feedback, now int64) (time.Duration, int64, error)
	// Forget, if set, drops key's state after its sequence.
	Forget func(key string)
}

// Sequences feeds the same random sequences of admissions, refunds,
// pauses, limit changes and clock steps to driver.Decide, Refund and Pause
// and to tg, and requires identical decisions, bookings and fresh
// moments.
func Sequences(t *testing.T, tg Target, sequences, steps int) {
	t.Helper()
	count := map[string]int{}
	defer func() { t.Logf("calls: %v", count) }()
	for seq := range sequences {
		rng := rand.New(rand.NewPCG(uint64(seq), 7))
		key := fmt.Sprint("parity-", seq)
		limits := []bucket.Limit{RandomLimit(rng), RandomLimit(rng), RandomLimit(rng)}
		if tg.Learn != nil {
			for i := range 2 {
				limits[i] = WithRandomFloor(rng, limits[i])
			}
		}
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
				st = driver.State{} // forgotten, as the backend forgets it
			}
			var goFresh, gotFresh int64
			switch p := rng.IntN(100); {
			case p < 70:
				req := driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(MaxCost(lim)), MaxWait: RandomWait(rng, lim)}
				want, err := driver.Decide(&st, &req, time.Microsecond, now)
				require.NoError(t, err, "%s: Decide", where)
				got, fresh, err := tg.Admit(req, now)
				require.NoError(t, err, "%s: admit", where)
				require.Equal(t, want, got, "%s: Admit(%v, cost %d, maxWait %v): Go's decision (expected), the backend's (actual)", where, lim, req.Cost, req.MaxWait)
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
				goFresh, gotFresh = driver.FreshAt(&st), fresh
			case p < 85 && len(booked) > 0:
				b := booked[rng.IntN(len(booked))]
				driver.Refund(&st, &b.req, b.d, time.Microsecond)
				count["refunds"]++
				fresh, err := tg.Refund(b.req, b.d, now)
				require.NoError(t, err, "%s: refund", where)
				goFresh, gotFresh = driver.FreshAt(&st), fresh
			case tg.Learn != nil && p < 95 && lim.IsLearned():
				dl := backendtest.Limit(lim)
				fb := RandomFeedback(rng, st.Gen)
				want := driver.Learn(&st, &dl, &fb, time.Microsecond, now)
				got, fresh, err := tg.Learn(key, dl, fb, now)
				require.NoError(t, err, "%s: learn", where)
				require.Equal(t, want, got, "%s: Learn(%v, %+v): Go's interval (expected), the backend's (actual)", where, lim, fb)
				count["learned"]++
				goFresh, gotFresh = driver.FreshAt(&st), fresh
			case p < 92:
				d := time.Duration(rng.Int64N(int64(2 * time.Second)))
				driver.Pause(&st, now+(int64(d)+999)/1000)
				fresh, err := tg.Pause(key, d, now)
				require.NoError(t, err, "%s: pause", where)
				goFresh, gotFresh = driver.FreshAt(&st), fresh
			default:
				goFresh, gotFresh = driver.FreshAt(&st), driver.FreshAt(&st)
			}
			// The backend forgets a bucket once it is fresh; so does the Go side.
			if goFresh <= now {
				goFresh, st = 0, driver.State{}
			}
			if gotFresh <= now {
				gotFresh = 0
			}
			require.Equal(t, goFresh, gotFresh, "%s: state fresh at, in Go (expected) and in the backend (actual)", where)
			now += RandomStep(rng, lim)
		}
		if tg.Forget != nil {
			tg.Forget(key)
		}
	}
}

// Batches decides random batches of up to 150 requests with admitBatch,
// on the fake clock now (µs), and requires the decisions of
// driver.Decide run on the requests in batch order. A batch has requests
// of four keys, each several times and not one after another, with
// quotas of different shapes.
func Batches(t *testing.T, admitBatch func(batch []driver.Admission, now int64) error) {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 9))
	keys := []string{"batch-d", "batch-a", "batch-c", "batch-b"}
	limits := map[string]bucket.Limit{}
	states := map[string]*driver.State{}
	for _, k := range keys {
		limits[k] = RandomLimit(rng)
		states[k] = new(driver.State)
	}
	now := int64(1_700_000_000_000_000)
	var allowed, sized int
	for round := range 40 {
		batch := make([]driver.Admission, 1+rng.IntN(150))
		for i := range batch {
			k := keys[rng.IntN(len(keys))]
			lim := limits[k]
			batch[i].Request = driver.Request{Key: k, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(MaxCost(lim)), MaxWait: RandomWait(rng, lim)}
		}
		require.NoError(t, admitBatch(batch, now), "round %d", round)
		for i, a := range batch {
			st := states[a.Key]
			if driver.FreshAt(st) <= now {
				*st = driver.State{}
			}
			want, err := driver.Decide(st, &a.Request, time.Microsecond, now)
			require.NoError(t, err, "round %d batch[%d]: Decide", round, i)
			require.NoError(t, a.Err, "round %d batch[%d]: AdmitBatch", round, i)
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

type booking struct {
	req driver.Request
	d   driver.Decision
}

// RandomLimit returns a limit with a rate from 1/10s to 1000/ms, periods
// that are not whole microseconds, bursts up to 20 and up to 3 quotas.
func RandomLimit(rng *rand.Rand) bucket.Limit {
	periods := []time.Duration{time.Millisecond, 10 * time.Millisecond, time.Second, 10 * time.Second, 1234567, 999}
	lim := bucket.Every(periods[rng.IntN(len(periods))], 1+rng.Int64N(1000)).WithBurst(1 + rng.Int64N(20))
	windows := []time.Duration{time.Millisecond, 50 * time.Millisecond, 250 * time.Millisecond, time.Second, 7 * time.Second, time.Hour, 100_001}
	rng.Shuffle(len(windows), func(i, j int) { windows[i], windows[j] = windows[j], windows[i] })
	for i := range rng.IntN(4) {
		lim = lim.WithQuota(1+rng.Int64N(60), windows[i])
	}
	return lim
}

// WithRandomFloor returns lim learning down to a floor from its own rate
// to a thousand times slower, periods not whole microseconds included.
func WithRandomFloor(rng *rand.Rand, lim bucket.Limit) bucket.Limit {
	periods := []time.Duration{lim.Period, 2 * lim.Period, 1000 * lim.Period, lim.Period + 999}
	p := periods[rng.IntN(len(periods))]
	return lim.WithFloor(max(1, lim.Rate*int64(lim.Period/time.Nanosecond)/int64(p)/(1+rng.Int64N(4))), p)
}

// RandomFeedback returns a valid Feedback: a throttle (of an admission
// whose Gen is up to gen, or unknown), an announced interval, remaining
// units, or several of them, with TTLs short enough to expire within a
// sequence.
func RandomFeedback(rng *rand.Rand, gen int64) driver.Feedback {
	var fb driver.Feedback
	switch rng.IntN(4) {
	case 0:
		fb.Throttled, fb.Gen = true, rng.Int64N(gen+1)
	case 1:
		fb.Interval = time.Duration(1 + rng.Int64N(int64(200*time.Millisecond)))
	case 2:
		fb.HasRemaining, fb.Remaining, fb.Reset = true, rng.Int64N(5), time.Duration(rng.Int64N(int64(time.Second)))
	default:
		fb.Throttled = true
		fb.HasRemaining, fb.Remaining, fb.Reset = true, 1+rng.Int64N(50), time.Duration(1+rng.Int64N(int64(time.Second)))
	}
	if rng.IntN(2) == 0 {
		fb.TTL = time.Duration(1 + rng.Int64N(int64(3*time.Second)))
	}
	return fb
}

// MaxCost returns a cost that lim admits: at most 3.
func MaxCost(lim bucket.Limit) int64 {
	c := lim.Burst
	for _, q := range lim.Quotas {
		c = min(c, q.Max)
	}
	return min(c, 3)
}

// RandomWait returns a MaxWait: none, negative, or up to 10 intervals or
// 2 seconds.
func RandomWait(rng *rand.Rand, lim bucket.Limit) time.Duration {
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

// RandomStep advances the clock by nothing, a fraction of the emission
// interval, a few intervals, or past the longest window.
func RandomStep(rng *rand.Rand, lim bucket.Limit) int64 {
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
