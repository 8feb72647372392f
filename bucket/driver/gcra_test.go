package driver_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// t0 is a Unix time in nanoseconds, as the SQLite and Redis backends use:
// the mathematics must hold far from zero.
const t0 = int64(1_700_000_000) * int64(time.Second)

// request returns a request of key "k" for cost units of lim, as a
// backend receives it: tests write limits with package bucket's
// constructors and convert them here, once.
func request(lim bucket.Limit, cost int64, maxWait time.Duration) driver.Request {
	return driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: cost, MaxWait: maxWait}
}

// A step is one Decide call at t0+at and the outcome it must have.
type step struct {
	at      time.Duration
	cost    int64
	maxWait time.Duration
	allowed bool
	wait    time.Duration // if allowed, the delay before the start; else the retry-after
}

func outcome(allowed bool, wait time.Duration) string {
	if allowed {
		return fmt.Sprintf("allowed after %v", wait)
	}
	return fmt.Sprintf("refused, admissible in %v", wait)
}

func outcomeOf(d driver.Decision) string { return outcome(d.Allowed, d.Wait) }

// decide calls Decide for cost units of lim at t0+at in nanoseconds and
// fails t on an error or a decision made at another time.
func decide(t *testing.T, st *driver.State, lim bucket.Limit, at time.Duration, cost int64, maxWait time.Duration) driver.Decision {
	t.Helper()
	req := request(lim, cost, maxWait)
	d, err := driver.Decide(st, &req, time.Nanosecond, t0+int64(at))
	require.NoError(t, err, "Decide(%v, cost %d, maxWait %v) at t0+%v", lim, cost, maxWait, at)
	require.Equal(t, t0+int64(at), d.Now, "Decide(%v, cost %d) at t0+%v: Now", lim, cost, at)
	return d
}

// run plays steps against st in order.
func run(t *testing.T, st *driver.State, lim bucket.Limit, steps []step) {
	t.Helper()
	for i, s := range steps {
		d := decide(t, st, lim, s.at, s.cost, s.maxWait)
		assert.Equal(t, outcome(s.allowed, s.wait), outcomeOf(d), "step %d: Decide(%v, cost %d, maxWait %v) at t0+%v", i, lim, s.cost, s.maxWait, s.at)
	}
}

// count makes tries decisions of cost 1 without waiting at t0 and returns
// how many were allowed.
func count(t *testing.T, st *driver.State, lim bucket.Limit, tries int) int {
	t.Helper()
	n := 0
	for range tries {
		if decide(t, st, lim, 0, 1, 0).Allowed {
			n++
		}
	}
	return n
}

func cloneState(st *driver.State) *driver.State {
	c := *st
	c.Quotas = slices.Clone(st.Quotas)
	if st.Learned != nil {
		l := *st.Learned
		c.Learned = &l
	}
	for i := range c.Quotas {
		c.Quotas[i].Slots = slices.Clone(c.Quotas[i].Slots)
	}
	return &c
}

func TestDecideBurstAfterIdle(t *testing.T) {
	var st driver.State
	run(t, &st, bucket.PerSecond(1).WithBurst(3), []step{
		{0, 1, 0, true, 0},
		{0, 1, 0, true, 0},
		{0, 1, 0, true, 0},
		{0, 1, 0, false, time.Second},
		{time.Second, 1, 0, true, 0},
		{time.Second, 1, 0, false, time.Second},
		// A long idle refills the bucket to its burst and no further.
		{time.Hour, 1, 0, true, 0},
		{time.Hour, 1, 0, true, 0},
		{time.Hour, 1, 0, true, 0},
		{time.Hour, 1, 0, false, time.Second},
		{time.Hour + 2500*time.Millisecond, 1, 0, true, 0},
		{time.Hour + 2500*time.Millisecond, 1, 0, true, 0},
		{time.Hour + 2500*time.Millisecond, 1, 0, false, 500 * time.Millisecond},
	})
}

func TestDecideSteadyRate(t *testing.T) {
	var st driver.State
	var steps []step
	for k := range 50 {
		at := time.Duration(k) * 100 * time.Millisecond
		steps = append(steps,
			step{at, 1, 0, true, 0},
			step{at + 99*time.Millisecond, 1, 0, false, time.Millisecond},
		)
	}
	run(t, &st, bucket.PerSecond(10), steps)

	// Paced with bookings, a steady stream lands exactly one interval apart.
	st = driver.State{}
	lim := bucket.PerSecond(3)
	for k := range 30 {
		d := decide(t, &st, lim, 0, 1, time.Minute)
		require.Equal(t, outcome(true, time.Duration(k)*lim.Interval()), outcomeOf(d), "booking %d of 3/s at t0", k)
	}
}

func TestDecideCost(t *testing.T) {
	var st driver.State
	run(t, &st, bucket.PerSecond(1).WithBurst(5), []step{
		{0, 3, 0, true, 0},
		{0, 3, 0, false, time.Second}, // level 3: 3 more fit once it drains to 2
		{0, 2, 0, true, 0},            // 3 + 2 = 5
		{0, 1, 0, false, time.Second},
		{0, 5, 0, false, 5 * time.Second},
		{2 * time.Second, 2, 0, true, 0},
		{2 * time.Second, 1, 0, false, time.Second},
		{10 * time.Second, 5, 0, true, 0},
		{10 * time.Second, 1, 0, false, time.Second},
	})
}

// TestDecideBoundary pins the admission test level + c ≤ B at its exact
// boundary: equal is admitted, one nanosecond earlier is not.
func TestDecideBoundary(t *testing.T) {
	lim := bucket.PerSecond(1).WithBurst(4)
	var st driver.State
	decide(t, &st, lim, 0, 3, 0) // level 3, TAT t0+3s
	tests := []step{
		{2 * time.Second, 3, 0, true, 0}, // level 1 + 3 = 4 = B
		{2*time.Second - 1, 3, 0, false, 1},
		{2*time.Second - 1, 3, 1, true, 1}, // booked exactly at the boundary
		{2*time.Second - 2, 3, 1, false, 2},
		{0, 1, 0, true, 0}, // level 3 + 1 = 4
		{0, 2, 0, false, time.Second},
		{3 * time.Second, 4, 0, true, 0}, // empty: the whole burst
		{3*time.Second - 1, 4, 0, false, 1},
	}
	for _, s := range tests {
		d := decide(t, cloneState(&st), lim, s.at, s.cost, s.maxWait)
		assert.Equal(t, outcome(s.allowed, s.wait), outcomeOf(d), "1/s burst 4, after cost 3 at t0: Decide(cost %d, maxWait %vns) at t0+%v",
			s.cost, int64(s.maxWait), s.at)
	}

	// Burst 1: the next unit is admitted exactly one interval later.
	st = driver.State{}
	run(t, &st, bucket.PerSecond(1), []step{
		{0, 1, 0, true, 0},
		{time.Second - 1, 1, 0, false, 1},
		{time.Second, 1, 0, true, 0},
	})
}

func TestDecideMaxWait(t *testing.T) {
	var st driver.State
	run(t, &st, bucket.PerSecond(1), []step{
		{0, 1, 0, true, 0},
		{0, 1, 5 * time.Second, true, time.Second}, // booked at t0+1s, when the level allows
		{0, 1, 2*time.Second - 1, false, 2 * time.Second},
		{0, 1, 2 * time.Second, true, 2 * time.Second},
		{0, 1, -time.Hour, false, 3 * time.Second}, // negative: now or never
		{500 * time.Millisecond, 1, time.Hour, true, 2500 * time.Millisecond},
		{4 * time.Second, 1, 0, true, 0},
	})

	// A maxWait beyond MaxDuration books no further than MaxDuration.
	st = driver.State{}
	run(t, &st, bucket.Every(driver.MaxDuration, 1), []step{
		{0, 1, math.MaxInt64, true, 0},
		{0, 1, math.MaxInt64, true, driver.MaxDuration},
		{0, 1, math.MaxInt64, false, 2 * driver.MaxDuration},
		{time.Hour, 1, math.MaxInt64, false, 2*driver.MaxDuration - time.Hour},
	})
}

// checkRetryAfter verifies that a refusal's Wait is exact: with maxWait 0
// the request is admitted at now+Wait and refused one tick before.
func checkRetryAfter(t testing.TB, st *driver.State, req driver.Request, unit time.Duration, now int64, d driver.Decision) {
	t.Helper()
	if d.Allowed {
		return
	}
	what := fmt.Sprintf("Decide(%v, cost %d) at %d refused with retry-after %v", req.Limit, req.Cost, now, d.Wait)
	ticks := int64(d.Wait / unit)
	require.Zero(t, d.Wait%unit, "%s, want a whole number of %v", what, unit)
	require.Positive(t, ticks, "%s, want at least one %v", what, unit)
	req.MaxWait = 0
	d2, err := driver.Decide(cloneState(st), &req, unit, now+ticks)
	require.NoError(t, err, what)
	require.Equal(t, outcome(true, 0), outcomeOf(d2), "%s, at that time", what)
	d2, err = driver.Decide(cloneState(st), &req, unit, now+ticks-1)
	require.NoError(t, err, what)
	require.Equal(t, outcome(false, unit), outcomeOf(d2), "%s, one tick earlier", what)
}

func TestDecideRetryAfter(t *testing.T) {
	lim := bucket.PerSecond(7).WithBurst(3).WithQuota(10, 2*time.Second).WithQuota(15, time.Minute)
	var st driver.State
	rng := rand.New(rand.NewPCG(1, 2))
	now := t0
	refusals := 0
	for range 2000 {
		now += rng.Int64N(int64(300 * time.Millisecond))
		req := request(lim, 1+rng.Int64N(3), 0)
		before := cloneState(&st)
		d, err := driver.Decide(&st, &req, time.Nanosecond, now)
		require.NoError(t, err)
		if !d.Allowed {
			refusals++
			checkRetryAfter(t, before, req, time.Nanosecond, now, d)
		}
	}
	assert.GreaterOrEqual(t, refusals, 100, "refusals in 2000 requests: the test exercises too little")
}

func TestDecidePause(t *testing.T) {
	var st driver.State
	lim := bucket.PerSecond(10).WithBurst(3)
	driver.Pause(&st, t0+int64(5*time.Second))
	driver.Pause(&st, t0+int64(time.Second)) // a shorter pause does not shorten it
	require.Equal(t, 5*time.Second, time.Duration(st.Paused-t0), "after Pause(t0+5s) and Pause(t0+1s), Paused - t0")
	run(t, &st, lim, []step{
		{0, 1, 0, false, 5 * time.Second},
		{0, 1, 5*time.Second - 1, false, 5 * time.Second},
		{0, 1, 5 * time.Second, true, 5 * time.Second}, // booked exactly at the end of the pause
		{5*time.Second - 1, 1, 0, false, 1},
		{5 * time.Second, 1, 0, true, 0},
		{5 * time.Second, 1, 0, true, 0},
		{5 * time.Second, 1, 0, false, 100 * time.Millisecond},
	})
	// A longer pause extends it, even over admissions already booked.
	driver.Pause(&st, t0+int64(time.Minute))
	run(t, &st, lim, []step{
		{10 * time.Second, 1, 0, false, 50 * time.Second},
		{time.Minute, 1, 0, true, 0},
	})
}

func TestDecideMicroseconds(t *testing.T) {
	const us = time.Microsecond
	lim := bucket.PerSecond(3) // 333333.33µs, rounded up to 333334µs
	req := request(lim, 1, time.Second)
	var st driver.State
	var starts []backendtest.Start
	now := t0 / int64(us)
	for k := range 6 {
		d, err := driver.Decide(&st, &req, us, now)
		require.NoError(t, err)
		if k == 3 { // beyond the maxWait of 1s
			assert.Equal(t, outcome(false, 1000002*us), outcomeOf(d), "booking %d of 3/s at µs", k)
			req.MaxWait = 2 * time.Second
			continue
		}
		want := time.Duration(k) * 333334 * us
		if k > 3 {
			want = time.Duration(k-1) * 333334 * us
		}
		assert.Equal(t, outcome(true, want), outcomeOf(d), "booking %d of 3/s at µs", k)
		assert.Equal(t, now*int64(us), d.Now, "booking %d of 3/s at µs: Now", k)
		starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
	assert.NoError(t, backendtest.Check(lim, starts))

	// A maxWait is floored to whole ticks: 1999ns is 1µs.
	st = driver.State{}
	req = request(bucket.Every(2*us, 1), 1, 1999)
	_, err := driver.Decide(&st, &req, us, 0)
	require.NoError(t, err)
	d, err := driver.Decide(&st, &req, us, 0)
	require.NoError(t, err)
	assert.Equal(t, outcome(false, 2*us), outcomeOf(d), "2µs interval, maxWait 1999ns at µs")

	// Periods and windows that are not whole microseconds round up.
	st = driver.State{}
	lim = bucket.Every(1500*time.Nanosecond, 1).WithQuota(1, 2500*time.Nanosecond)
	req = request(lim, 1, time.Hour)
	starts = starts[:0]
	for range 5 {
		d, err := driver.Decide(&st, &req, us, 10)
		require.NoError(t, err, "Decide(%v) at µs", lim)
		require.True(t, d.Allowed, "Decide(%v) at µs refused with maxWait 1h", lim)
		starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
	assert.NoError(t, backendtest.Check(lim, starts), "%v at µs", lim)
	for i := 1; i < len(starts); i++ {
		assert.Equal(t, 4*us, time.Duration(starts[i].At-starts[i-1].At),
			"%v at µs: bookings apart (the end of a unit's 1µs slot plus the window of 3µs)", lim)
	}
}

// TestDecideHugeLimitsNeverOverAdmit: limits at the edge of validity,
// where burst × interval is close to MaxDuration and the interval is not a
// whole number of ticks.
func TestDecideHugeLimitsNeverOverAdmit(t *testing.T) {
	maxBurst := func(period time.Duration, rate int64) int64 {
		return int64(driver.MaxDuration) / int64(period) * rate
	}
	tests := []struct {
		name string
		lim  bucket.Limit
		unit time.Duration
		cost []int64 // each booked at the earliest, from the same now
	}{
		{"7 per MaxDuration, burst 7", bucket.Every(driver.MaxDuration, 7).WithBurst(7), time.Nanosecond, []int64{7, 1}},
		{"3 per 2ns, burst 1.5×MaxDuration", bucket.Every(2, 3).WithBurst(maxBurst(2, 3)), time.Nanosecond, []int64{maxBurst(2, 3), 1}},
		{"1 per ns, burst MaxDuration, at µs", bucket.Every(1, 1).WithBurst(maxBurst(1, 1)), time.Microsecond, []int64{maxBurst(1, 1), 1}},
		{"1 per s, burst MaxDuration/s", bucket.PerSecond(1).WithBurst(maxBurst(time.Second, 1)), time.Nanosecond, []int64{maxBurst(time.Second, 1), 1}},
		{"1 per s, burst MaxDuration/s, at µs", bucket.PerSecond(1).WithBurst(maxBurst(time.Second, 1)), time.Microsecond, []int64{maxBurst(time.Second, 1), 1}},
		// Used + cost passes MaxInt64 (found by FuzzDecide).
		{"quota MaxInt64/s", bucket.Every(1, 1_000_000_000).WithBurst(math.MaxInt64).WithQuota(math.MaxInt64, time.Second), time.Nanosecond, []int64{math.MaxInt64, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, tt.lim.Validate())
			var st driver.State
			var starts []backendtest.Start
			now := t0 / int64(tt.unit)
			for _, c := range tt.cost {
				req := request(tt.lim, c, driver.MaxDuration)
				d, err := driver.Decide(&st, &req, tt.unit, now)
				require.NoError(t, err, "Decide(cost %d)", c)
				if d.Allowed {
					starts = append(starts, backendtest.Start{At: d.Start(), Cost: c})
				}
			}
			assert.NoError(t, backendtest.Check(tt.lim, starts), "starts at t0+%v", startOffsets(starts))
		})
	}
}

func startOffsets(starts []backendtest.Start) []time.Duration {
	var ds []time.Duration
	for _, s := range starts {
		ds = append(ds, time.Duration(s.At-t0))
	}
	return ds
}

func TestFreshAt(t *testing.T) {
	assert.Zero(t, driver.FreshAt(&driver.State{}), "FreshAt(zero State)")
	var st driver.State
	driver.Pause(&st, t0+int64(time.Hour))
	assert.GreaterOrEqual(t, time.Duration(driver.FreshAt(&st)-t0), time.Hour, "FreshAt after Pause(t0+1h), from t0")
	st = driver.State{}
	d := decide(t, &st, bucket.PerSecond(1).WithBurst(10).WithQuota(5, time.Hour), 0, 3, 0)
	assert.GreaterOrEqual(t, driver.FreshAt(&st), d.Start()+int64(time.Hour), "FreshAt after a quota 5/h admission at t0")

	// After FreshAt, a state decides exactly as a zero State would.
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		unit := time.Nanosecond
		if seed%3 == 0 {
			unit = time.Microsecond
		}
		lim := randomLimit(rng)
		randomRequest := func(lim bucket.Limit) driver.Request {
			return request(lim, 1+rng.Int64N(min(lim.Burst, 3)), time.Duration(rng.Int64N(int64(lim.Interval())*3)))
		}
		var st driver.State
		now := t0 / int64(unit)
		span := int64(lim.Interval())*lim.Burst/int64(unit) + 2
		for range rng.IntN(30) {
			now += rng.Int64N(span)
			req := randomRequest(lim)
			if rng.IntN(10) == 0 {
				driver.Pause(&st, now+rng.Int64N(span))
				continue
			}
			d, err := driver.Decide(&st, &req, unit, now)
			require.NoError(t, err)
			if rng.IntN(5) == 0 {
				driver.Refund(&st, &req, d, unit)
			}
		}
		fresh := max(driver.FreshAt(&st), now)
		var zero driver.State
		later := lim
		if rng.IntN(4) == 0 {
			later = randomLimit(rng) // the limit may change too
		}
		at := fresh
		for i := range 20 {
			req := randomRequest(later)
			d1, err := driver.Decide(&st, &req, unit, at)
			require.NoError(t, err)
			d2, err := driver.Decide(&zero, &req, unit, at)
			require.NoError(t, err)
			msg := fmt.Sprintf("seed %d: %v, then %v from FreshAt on at %v: decision %d, against a zero State's", seed, lim, later, unit, i)
			require.Equal(t, outcomeOf(d2), outcomeOf(d1), msg)
			require.Equal(t, d2.Booking.TAT, d1.Booking.TAT, msg)
			at += rng.Int64N(int64(later.Interval())/int64(unit) + 1)
		}
	}
}

// randomLimit returns a small valid limit, with up to two quotas.
func randomLimit(rng *rand.Rand) bucket.Limit {
	periods := []time.Duration{time.Microsecond, 1500 * time.Nanosecond, time.Millisecond, 7 * time.Millisecond, time.Second}
	lim := bucket.Every(periods[rng.IntN(len(periods))], 1+rng.Int64N(5)).WithBurst(1 + rng.Int64N(5))
	for i := range rng.IntN(3) {
		w := time.Duration(i+1) * lim.Period * time.Duration(1+rng.IntN(20))
		if l := lim.WithQuota(1+rng.Int64N(10)+lim.Burst, w+time.Duration(rng.IntN(1000))); l.Validate() == nil {
			lim = l
		}
	}
	return lim
}

func TestDecideErrors(t *testing.T) {
	lim := bucket.PerSecond(10).WithBurst(5).WithQuota(3, time.Hour)
	keyed := func(key string, cost int64) driver.Request {
		r := request(lim, cost, 0)
		r.Key = key
		return r
	}
	tests := []struct {
		name  string
		req   driver.Request
		want  error
		field string // for a *LimitError
		bound string // for a *CostError
	}{
		{"empty key", keyed("", 1), driver.ErrEmptyKey, "", ""},
		{"cost 0", keyed("k", 0), driver.ErrInvalidCost, "", ""},
		{"cost -1", keyed("k", -1), driver.ErrInvalidCost, "", ""},
		{"cost MinInt64", keyed("k", math.MinInt64), driver.ErrInvalidCost, "", ""},
		{"cost above burst", request(bucket.PerSecond(1).WithBurst(5), 6, time.Hour), driver.ErrImpossible, "", "burst"},
		{"cost MaxInt64", request(lim, math.MaxInt64, time.Hour), driver.ErrImpossible, "", "burst"},
		{"cost above quota", request(lim, 4, time.Hour), driver.ErrImpossible, "", "quota 3/h"},
		{"invalid limit", request(bucket.PerSecond(0), 1, 0), driver.ErrInvalidLimit, "Rate", ""},
		{"invalid quota", request(bucket.PerSecond(1).WithQuota(1, 0), 1, 0), driver.ErrInvalidLimit, "Quotas[0].Window", ""},
	}
	var st driver.State
	decide(t, &st, lim, 0, 1, 0)
	before := cloneState(&st)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := driver.Decide(&st, &tt.req, time.Nanosecond, t0)
			require.ErrorIs(t, err, tt.want)
			assert.False(t, d.Allowed, "a failed Decide allowed")
			if tt.field != "" {
				assertLimitError(t, err, tt.field)
			}
			if tt.bound != "" {
				var ce *driver.CostError
				if assert.ErrorAs(t, err, &ce) {
					assert.Equal(t, tt.bound, ce.Bound)
					assert.Equal(t, tt.req.Cost, ce.Cost)
				}
			}
			assert.Equal(t, before, &st, "a failed Decide changed the state")
		})
	}
}

// assertLimitError checks that err is a *driver.LimitError, matching
// ErrInvalidLimit, that names field.
func assertLimitError(t *testing.T, err error, field string, msgAndArgs ...any) {
	t.Helper()
	require.ErrorIs(t, err, driver.ErrInvalidLimit, msgAndArgs...)
	var le *driver.LimitError
	require.ErrorAs(t, err, &le, msgAndArgs...)
	assert.Equal(t, field, le.Field, msgAndArgs...)
}

func TestDecideAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("long warm-up")
	}
	tests := []struct {
		name string
		lim  bucket.Limit
		cost int64
	}{
		{"no quotas, admitted", bucket.PerSecond(1000).WithBurst(10), 1},
		{"no quotas, refused", bucket.PerSecond(1).WithBurst(10), 5},
		{"quotas", bucket.PerSecond(1000).WithBurst(10).WithQuota(100, time.Second).WithQuota(1_000_000, time.Hour), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var st driver.State
			req := request(tt.lim, tt.cost, 0)
			now := t0
			decideNext := func() {
				now += int64(100 * time.Millisecond)
				if _, err := driver.Decide(&st, &req, time.Nanosecond, now); err != nil {
					t.Fatal(err) // not require: it would count its own allocations
				}
			}
			for range 40_000 { // over an hour: every quota has filled its slots
				decideNext()
			}
			assert.Zero(t, testing.AllocsPerRun(1000, decideNext), "allocations per Decide on an existing state")
		})
	}
}
