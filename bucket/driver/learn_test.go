package driver_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// learnedLimit is 100/s, burst 1, learning down to 1/s.
var learnedLimit = bucket.PerSecond(100).WithFloor(1, time.Second)

const ms = int64(time.Millisecond)

// learn applies fb at t0+at in nanoseconds.
func learn(t *testing.T, st *driver.State, lim bucket.Limit, at time.Duration, fb driver.Feedback) {
	t.Helper()
	require.NoError(t, fb.Validate())
	dl := backendtest.Limit(lim)
	driver.Learn(st, &dl, &fb, time.Nanosecond, t0+int64(at))
}

// interval returns the interval a decision of lim at t0+at applies,
// deciding on a copy of st.
func interval(t *testing.T, st *driver.State, lim bucket.Limit, at time.Duration) time.Duration {
	t.Helper()
	return decide(t, cloneState(st), lim, at, 1, 0).Interval
}

// An announced policy becomes the key's interval until it expires; the
// limit's own interval is the ceiling and the floor bounds it below.
func TestLearnAnnounced(t *testing.T) {
	var st driver.State
	assert.Equal(t, 10*time.Millisecond, interval(t, &st, learnedLimit, 0), "nothing learned")

	learn(t, &st, learnedLimit, 0, driver.Feedback{Interval: 50 * time.Millisecond, TTL: time.Second})
	assert.Equal(t, 50*time.Millisecond, interval(t, &st, learnedLimit, 0))
	assert.Equal(t, 50*time.Millisecond, interval(t, &st, learnedLimit, time.Second-1))
	assert.Equal(t, 10*time.Millisecond, interval(t, &st, learnedLimit, time.Second), "expired after its TTL")

	learn(t, &st, learnedLimit, 2*time.Second, driver.Feedback{Interval: time.Millisecond})
	assert.Equal(t, 10*time.Millisecond, interval(t, &st, learnedLimit, 2*time.Second), "faster than the ceiling")
	learn(t, &st, learnedLimit, 2*time.Second, driver.Feedback{Interval: time.Hour})
	assert.Equal(t, time.Second, interval(t, &st, learnedLimit, 2*time.Second), "slower than the floor")
	assert.Equal(t, t0+int64(2*time.Second+driver.DefaultLearnTTL), driver.FreshAt(&st), "kept while learned")

	// Admissions are paced at the learned interval: each next admission
	// a second after the last.
	assert.True(t, decide(t, &st, learnedLimit, 2*time.Second, 1, 0).Allowed)
	d := decide(t, &st, learnedLimit, 2*time.Second+time.Millisecond, 1, 0)
	assert.False(t, d.Allowed)
	assert.Equal(t, time.Second-time.Millisecond, d.Wait)

	fixed := bucket.PerSecond(100)
	var st2 driver.State
	learn(t, &st2, fixed, 0, driver.Feedback{Interval: time.Second, Throttled: true})
	assert.Nil(t, st2.Learned, "a fixed limit learned")
	st.Learned.Interval = int64(time.Second)
	assert.Equal(t, 10*time.Millisecond, interval(t, &st, fixed, 2*time.Second), "a record applied to the limit made fixed")
}

// A throttle drops the rate to Beta times itself, and it climbs back
// along the cubic: at the rate it dropped from after K, beyond it after,
// up to the ceiling.
func TestLearnThrottleCubic(t *testing.T) {
	lim := bucket.PerSecond(100).WithFloor(1, time.Second)
	var st driver.State
	learn(t, &st, lim, 0, driver.Feedback{Interval: 100 * time.Millisecond}) // 10/s
	learn(t, &st, lim, time.Second, driver.Feedback{Throttled: true})
	k := time.Duration(driver.RecoverTicks(100*ms, time.Nanosecond))
	assert.Equal(t, 1957*time.Millisecond, k, "K = ∛(10 × 0.3 / 0.4) s")
	at := func(d time.Duration) time.Duration { return interval(t, &st, lim, time.Second+d) }
	assert.Equal(t, time.Duration(142857143), at(0), "10/s × 0.7")
	assert.Equal(t, 100*time.Millisecond, at(k), "back to 10/s after K")
	prev := at(0)
	for d := k / 10; d <= 3*k; d += k / 10 {
		cur := at(d)
		assert.LessOrEqual(t, cur, prev, "the rate fell at %v after the drop", d)
		prev = cur
	}
	assert.Less(t, at(2*k), 100*time.Millisecond, "no probing beyond the rate dropped from")
	assert.Equal(t, 10*time.Millisecond, at(10*k), "beyond the ceiling")
	concave := at(k/2) - at(k)
	assert.Less(t, concave, (at(0)-at(k))/4, "half-way to K the rate is not most of the way back")

	// A second throttle drops from where the cubic stands.
	cur := at(k / 2)
	learn(t, &st, lim, time.Second+k/2, driver.Feedback{Throttled: true})
	assert.Equal(t, int64(cur), st.Learned.Interval)
	assert.Equal(t, driver.RecoverTicks(int64(cur), time.Nanosecond), st.Learned.Recover)
}

// A throttle of an admission decided before the last drop is the same
// overload: it confirms the drop and drops nothing again. One decided
// after it drops again. A throttle without a Gen always drops.
func TestLearnThrottleEpoch(t *testing.T) {
	lim := bucket.PerSecond(10).WithFloor(1, time.Second)
	var st driver.State
	before := decide(t, &st, lim, 0, 1, 0)
	require.True(t, before.Allowed)
	learn(t, &st, lim, time.Millisecond, driver.Feedback{Throttled: true, Gen: before.Booking.Gen, TTL: time.Second})
	dropped := interval(t, &st, lim, time.Millisecond)
	assert.Equal(t, time.Duration(142857143), dropped)

	learn(t, &st, lim, 2*time.Millisecond, driver.Feedback{Throttled: true, Gen: before.Booking.Gen, TTL: 2 * time.Second})
	assert.Equal(t, dropped, interval(t, &st, lim, time.Millisecond), "dropped twice for one overload")
	assert.Equal(t, t0+int64(2*time.Second+2*time.Millisecond), st.Learned.Until, "the throttle did not confirm the drop")

	after := decide(t, &st, lim, time.Second, 1, 0)
	require.True(t, after.Allowed)
	cur := interval(t, &st, lim, time.Second)
	learn(t, &st, lim, time.Second, driver.Feedback{Throttled: true, Gen: after.Booking.Gen})
	assert.Greater(t, interval(t, &st, lim, time.Second), cur, "a later overload did not drop")

	n := st.Learned.Drop
	learn(t, &st, lim, time.Second+time.Millisecond, driver.Feedback{Throttled: true})
	assert.Greater(t, st.Learned.Drop, n, "a throttle without Gen")
}

// Remaining units pace the key until the reset; none remaining pauses it.
func TestLearnRemaining(t *testing.T) {
	var st driver.State
	learn(t, &st, learnedLimit, 0, driver.Feedback{HasRemaining: true, Remaining: 4, Reset: 2 * time.Second})
	assert.Equal(t, 500*time.Millisecond, interval(t, &st, learnedLimit, 0))
	assert.Equal(t, 10*time.Millisecond, interval(t, &st, learnedLimit, 2*time.Second), "paced past the reset")

	learn(t, &st, learnedLimit, 3*time.Second, driver.Feedback{HasRemaining: true, Remaining: 0, Reset: time.Second})
	d := decide(t, &st, learnedLimit, 3*time.Second, 1, 0)
	assert.False(t, d.Allowed)
	assert.Equal(t, time.Second, d.Wait, "none remaining: paused until the reset")
	assert.Nil(t, st.Learned, "a pause is not a learned interval")

	learn(t, &st, learnedLimit, 5*time.Second, driver.Feedback{Interval: 20 * time.Millisecond, HasRemaining: true, Remaining: 100, Reset: time.Second})
	assert.Equal(t, 20*time.Millisecond, interval(t, &st, learnedLimit, 5*time.Second), "the slower of policy and pace")
}

func TestRecoverTicks(t *testing.T) {
	for _, c := range []struct {
		interval time.Duration
		k        time.Duration
	}{
		{100 * time.Millisecond, 1957 * time.Millisecond}, // 10/s
		{time.Millisecond, 9085 * time.Millisecond},       // 1,000/s
		{time.Second, 908 * time.Millisecond},             // 1/s
		{time.Microsecond, 90856 * time.Millisecond},      // 10⁶/s
		{driver.MaxDuration, time.Millisecond},            // at least one
	} {
		assert.Equal(t, c.k, time.Duration(driver.RecoverTicks(int64(c.interval), time.Nanosecond)), "ns, %v", c.interval)
		us := driver.Ticks(c.interval, time.Microsecond)
		assert.Equal(t, int64(c.k/time.Microsecond), driver.RecoverTicks(us, time.Microsecond), "µs, %v", c.interval)
	}
	assert.Equal(t, 908560*time.Millisecond, time.Duration(driver.RecoverTicks(1, time.Nanosecond)), "10⁹/s")
}

func TestFeedbackValidate(t *testing.T) {
	for _, fb := range []driver.Feedback{
		{Gen: -1}, {Interval: -1}, {Interval: driver.MaxDuration + 1}, {Remaining: -1},
		{Reset: -1}, {Reset: driver.MaxDuration + 1}, {TTL: -1},
	} {
		assert.ErrorIs(t, fb.Validate(), driver.ErrInvalidFeedback, "%+v", fb)
	}
	assert.NoError(t, (&driver.Feedback{Throttled: true, Interval: time.Second, HasRemaining: true, Reset: time.Second}).Validate())
}

// Whatever a key learns, its admissions never pass the limit's own rate
// (the ceiling): judged by Check against the ceiling, over random
// feedback and requests.
func TestLearnNeverAboveCeiling(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	lim := bucket.PerSecond(50).WithBurst(5).WithFloor(1, time.Second)
	for run := range 20 {
		var (
			st     driver.State
			starts []backendtest.Start
			now    int64
		)
		for range 2000 {
			now += rng.Int64N(int64(20 * time.Millisecond))
			switch rng.IntN(10) {
			case 0:
				learn(t, &st, lim, time.Duration(now), driver.Feedback{Throttled: true, Gen: rng.Int64N(st.Gen + 1)})
			case 1:
				learn(t, &st, lim, time.Duration(now), driver.Feedback{Interval: time.Duration(rng.Int64N(int64(time.Second)))})
			case 2:
				learn(t, &st, lim, time.Duration(now), driver.Feedback{HasRemaining: true, Remaining: rng.Int64N(5), Reset: time.Duration(rng.Int64N(int64(time.Second)))})
			}
			cost := 1 + rng.Int64N(3)
			d := decide(t, &st, lim, time.Duration(now), cost, time.Duration(rng.Int64N(int64(time.Second))))
			if d.Allowed {
				require.GreaterOrEqual(t, d.Interval, lim.Interval())
				require.LessOrEqual(t, d.Interval, time.Second)
				starts = append(starts, backendtest.Start{At: d.Start(), Cost: cost})
			}
		}
		require.NoError(t, backendtest.Check(lim, starts), "run %d", run)
	}
}
