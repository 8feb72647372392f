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

// TestQuotasSharingATick: two quotas whose windows differ in nanoseconds
// but round up to the same number of microseconds cannot be kept apart by
// a backend counting in microseconds, so the limit is invalid.
func TestQuotasSharingATick(t *testing.T) {
	lim := bucket.PerSecond(1_000_000).WithBurst(10).WithQuota(2, 1500*time.Nanosecond).WithQuota(2, 1001*time.Nanosecond)
	req := request(lim, 1, 0)
	assertLimitError(t, req.Limit.Validate(), "Quotas[1].Window", "%v.Validate()", lim)
	var st driver.State
	_, err := driver.Decide(&st, &req, time.Microsecond, 0)
	assertLimitError(t, err, "Quotas[1].Window", "Decide(%v)", lim)
	apart := backendtest.Limit(bucket.PerSecond(1).WithQuota(2, 1000).WithQuota(2, 1001))
	assert.NoError(t, apart.Validate(), "%v.Validate(): 1µs and 2µs", apart)
}

func TestQuotaRolling(t *testing.T) {
	const window = 100 * time.Second
	const slot = window / driver.QuotaSlots // 1s
	lim := bucket.PerSecond(1_000_000).WithBurst(100).WithQuota(5, window)
	for _, off := range []time.Duration{0, 1, slot / 2, slot - 1, slot, 7*slot + 3} {
		var st driver.State
		for i := range 5 {
			require.True(t, decide(t, &st, lim, off, 1, 0).Allowed, "unit %d of quota 5/100s at t0+%v refused", i+1, off)
		}
		before := cloneState(&st)
		d := decide(t, &st, lim, off, 1, 0)
		require.False(t, d.Allowed, "unit 6 of quota 5/100s at t0+%v allowed", off)
		// Released between W and W+w after their start, at the end of
		// their slot plus W.
		assert.Greater(t, d.Wait, window, "quota 5/100s full at t0+%v: retry-after", off)
		assert.LessOrEqual(t, d.Wait, window+slot, "quota 5/100s full at t0+%v: retry-after", off)
		assert.Equal(t, (off/slot+1)*slot+window-off, d.Wait, "quota 5/100s full at t0+%v: retry-after, the end of the slot plus the window", off)
		checkRetryAfter(t, before, request(lim, 1, 0), time.Nanosecond, t0+int64(off), d)
	}

	// A window that is no multiple of QuotaSlots: w = ceil(1001ns/100) = 11ns.
	lim = bucket.Every(time.Nanosecond, 1).WithBurst(10).WithQuota(1, 1001)
	w := driver.SlotWidth(1001)
	for _, off := range []time.Duration{0, 5, 10, 11} {
		var st driver.State
		decide(t, &st, lim, off, 1, 0)
		d := decide(t, &st, lim, off, 1, 0)
		want := time.Duration((int64(off)+t0)/w+1)*time.Duration(w) + 1001 - time.Duration(t0) - off
		assert.Equal(t, outcome(false, want), outcomeOf(d), "quota 1/1001ns used at t0+%v", off)
		assert.Greater(t, d.Wait, time.Duration(1001), "quota 1/1001ns used at t0+%v: retry-after", off)
		assert.LessOrEqual(t, d.Wait, time.Duration(1001+w), "quota 1/1001ns used at t0+%v: retry-after", off)
	}

	// A rolling window: units leave one slot at a time, not all at once.
	lim = bucket.PerSecond(1_000_000).WithBurst(100).WithQuota(10, window)
	var st driver.State
	for i := range 10 {
		decide(t, &st, lim, time.Duration(i)*10*time.Second, 1, 0)
	}
	run(t, &st, lim, []step{
		{window, 1, 0, false, slot},
		{window + slot, 1, 0, true, 0},
		{window + slot, 1, 0, false, 10 * time.Second},
		{window + 11*slot, 1, 0, true, 0},
		{window + 11*slot, 1, 0, false, 10 * time.Second},
	})
}

func TestDecideQuotasNeverOverAdmit(t *testing.T) {
	limits := []bucket.Limit{
		bucket.PerSecond(100).WithBurst(10).WithQuota(30, time.Second),
		bucket.PerSecond(1000).WithBurst(50).WithQuota(40, 100*time.Millisecond).WithQuota(90, 300*time.Millisecond),
		bucket.PerSecond(7).WithBurst(3).WithQuota(5, 1001*time.Millisecond).WithQuota(8, 3*time.Second).WithQuota(9, 4*time.Second),
		bucket.Every(time.Nanosecond, 1).WithBurst(5).WithQuota(3, 150).WithQuota(30, 1999),
	}
	for _, unit := range []time.Duration{time.Nanosecond, time.Microsecond} {
		for i, lim := range limits {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(unit)))
			var st driver.State
			var starts []backendtest.Start
			interval := max(lim.Interval(), unit)
			now := t0 / int64(unit)
			for range 5000 {
				now += rng.Int64N(int64(3*interval/unit) + 1)
				req := request(lim, 1+rng.Int64N(2), time.Duration(rng.Int64N(int64(5*interval))))
				d, err := driver.Decide(&st, &req, unit, now)
				require.NoError(t, err)
				if d.Allowed {
					starts = append(starts, backendtest.Start{At: d.Start(), Cost: req.Cost})
				}
			}
			assert.NoError(t, backendtest.Check(lim, starts), "%v at %v", lim, unit)
			assert.GreaterOrEqual(t, len(starts), 40, "%v at %v: admissions in 5000 requests, too few to exercise it", lim, unit)
		}
	}
}

func TestRefusalChargesNothing(t *testing.T) {
	// A quota refusal charges no rate.
	withQuota := bucket.PerHour(1).WithBurst(10).WithQuota(3, time.Hour)
	var st driver.State
	for range 3 {
		decide(t, &st, withQuota, 0, 1, 0)
	}
	before := cloneState(&st)
	for range 5 {
		require.False(t, decide(t, &st, withQuota, 0, 1, time.Minute).Allowed, "unit 4 of quota 3/h allowed")
	}
	assert.Equal(t, before, &st, "quota refusals changed the state")
	assert.Equal(t, 7, count(t, &st, bucket.PerHour(1).WithBurst(10), 20), "after 3 admitted and 5 refused by quota, admitted of burst 10")

	// A rate refusal charges no quota.
	st = driver.State{}
	narrow := bucket.PerHour(1).WithBurst(2).WithQuota(5, time.Hour)
	for range 2 {
		decide(t, &st, narrow, 0, 1, 0)
	}
	before = cloneState(&st)
	for range 8 {
		require.False(t, decide(t, &st, narrow, 0, 1, time.Minute).Allowed, "unit 3 of burst 2 allowed")
	}
	assert.Equal(t, before, &st, "rate refusals changed the state")
	assert.Equal(t, 3, count(t, &st, bucket.PerHour(1).WithBurst(10).WithQuota(5, time.Hour), 10), "after 2 admitted and 8 refused by rate, admitted of quota 5")
}

func TestDecideLimitChanges(t *testing.T) {
	open := bucket.PerSecond(1000).WithBurst(100)
	var st driver.State
	count(t, &st, open, 3)
	hour := open.WithQuota(3, time.Hour)
	assert.Equal(t, 3, count(t, &st, hour, 5), "admitted under a quota 3/h added after 3 admissions (it starts empty)")
	assert.Equal(t, 1, count(t, &st, open, 1), "admitted of 1 with the quota removed")
	assert.Empty(t, st.Quotas, "quota states with the quota removed")
	assert.Equal(t, 3, count(t, &st, hour, 5), "admitted under quota 3/h removed and added back (its old state dropped)")
	twoHours := open.WithQuota(3, 2*time.Hour)
	assert.Equal(t, 3, count(t, &st, twoHours, 5), "admitted with the window changed to 2h")
	if assert.Len(t, st.Quotas, 1) {
		assert.Equal(t, 2*time.Hour, time.Duration(st.Quotas[0].Window), "the state's window changed to 2h")
	}
	assert.Equal(t, 2, count(t, &st, open.WithQuota(5, 2*time.Hour), 5), "admitted with quota 3/2h raised to 5/2h after 3")
	assert.Equal(t, 0, count(t, &st, open.WithQuota(4, 2*time.Hour), 5), "admitted with quota lowered to 4/2h after 5")

	// Quotas are matched by window, whatever their order.
	st = driver.State{}
	ab := open.WithQuota(2, time.Hour).WithQuota(50, 24*time.Hour)
	ba := open.WithQuota(50, 24*time.Hour).WithQuota(2, time.Hour)
	count(t, &st, ab, 2)
	assert.Equal(t, 0, count(t, &st, ba, 3), "admitted with the quotas reordered after 2/h was used up")
	assert.Equal(t, 0, count(t, &st, ba.WithQuota(1, time.Minute), 3), "admitted with a third quota added while 2/h is used up")

	// The rate changes at the next admission.
	st = driver.State{}
	assert.Equal(t, 1, count(t, &st, bucket.PerHour(1), 3), "admitted of burst 1")
	assert.Equal(t, 2, count(t, &st, bucket.PerHour(1).WithBurst(3), 5), "admitted with burst raised from 1 to 3")
}
