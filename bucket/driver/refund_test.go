package driver_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func TestRefund(t *testing.T) {
	lim := bucket.PerSecond(1)
	req := request(lim, 1, 10*time.Second)
	var st driver.State
	decide(t, &st, lim, 0, 1, 0)
	d2 := decide(t, &st, lim, 0, 1, 10*time.Second)
	driver.Refund(&st, &req, d2, time.Nanosecond) // the last booking: its slot is free again
	d3 := decide(t, &st, lim, 0, 1, 10*time.Second)
	require.Equal(t, time.Second, d3.Wait, "after refunding the last booking (t0+1s), next booking at t0+")
	d4 := decide(t, &st, lim, 0, 1, 10*time.Second)
	driver.Refund(&st, &req, d3, time.Nanosecond) // d4 depends on d3: ignored
	d5 := decide(t, &st, lim, 0, 1, 10*time.Second)
	require.Equal(t, []time.Duration{2 * time.Second, 3 * time.Second}, []time.Duration{d4.Wait, d5.Wait},
		"after refunding a booking a later one depends on, bookings at t0+")
	for range 2 { // refunding twice is harmless
		driver.Refund(&st, &req, d5, time.Nanosecond)
	}
	driver.Refund(&st, &req, driver.Decision{}, time.Nanosecond) // a refusal refunds nothing
	// d4 is the latest admission again, but a refund came since: only the
	// latest admission with nothing refunded since can be given back.
	driver.Refund(&st, &req, d4, time.Nanosecond)
	assert.Equal(t, 3*time.Second, decide(t, &st, lim, 0, 1, 10*time.Second).Wait,
		"after refunding d5 twice and then d4, next booking at t0+ (d5's slot only)")

	// A refund a later admission depends on returns no quota units either.
	lim = bucket.PerSecond(1).WithQuota(2, time.Hour)
	req = request(lim, 1, 10*time.Second)
	st = driver.State{}
	b1 := decide(t, &st, lim, 0, 1, 10*time.Second)
	b2 := decide(t, &st, lim, 0, 1, 10*time.Second)
	require.False(t, decide(t, &st, lim, 0, 1, 10*time.Second).Allowed, "third unit of quota 2/h allowed")
	driver.Refund(&st, &req, b1, time.Nanosecond)
	assert.False(t, decide(t, &st, lim, 0, 1, 10*time.Second).Allowed, "after refunding the first of two, next allowed (b2 depends on b1)")
	// The latest admission returns its rate slot and its quota unit.
	driver.Refund(&st, &req, b2, time.Nanosecond)
	assert.Equal(t, outcome(true, time.Second), outcomeOf(decide(t, &st, lim, 0, 1, 10*time.Second)), "after refunding the latest of two, next")
	assert.False(t, decide(t, &st, lim, 0, 1, 10*time.Second).Allowed, "after a refund of one unit, two more allowed")

	// Units of cost c come back as c.
	lim = bucket.PerSecond(1000).WithBurst(10).WithQuota(5, time.Hour)
	req = request(lim, 3, 0)
	st = driver.State{}
	decide(t, &st, lim, 0, 2, 0)
	c3 := decide(t, &st, lim, 0, 3, 0)
	driver.Refund(&st, &req, c3, time.Nanosecond)
	w := driver.SlotWidth(int64(time.Hour))
	release := time.Duration((t0/w+1)*w - t0) // the end of t0's slot
	run(t, &st, lim, []step{
		{time.Second, 3, 0, true, 0},
		{time.Second, 1, 0, false, release + time.Hour - time.Second},
	})
}

// TestRefundTwiceAfterRebooking: Backend.Refund says refunding twice is
// harmless. A duplicate refund must not give back a later admission that
// happens to look like the refunded one.
func TestRefundTwiceAfterRebooking(t *testing.T) {
	lim := bucket.PerSecond(1)
	req := request(lim, 1, 10*time.Second)
	var st driver.State
	decide(t, &st, lim, 0, 1, 0)
	d2 := decide(t, &st, lim, 0, 1, 10*time.Second)
	driver.Refund(&st, &req, d2, time.Nanosecond)
	d3 := decide(t, &st, lim, 0, 1, 10*time.Second) // takes d2's slot: the same booking values
	driver.Refund(&st, &req, d2, time.Nanosecond)   // duplicate refund of d2
	d4 := decide(t, &st, lim, 0, 1, 10*time.Second)
	assert.NotEqual(t, d3.Start(), d4.Start(), "a duplicate refund of a booking freed the slot of the later booking that replaced it")
	starts := []backendtest.Start{{At: t0, Cost: 1}, {At: d3.Start(), Cost: 1}, {At: d4.Start(), Cost: 1}}
	assert.NoError(t, backendtest.Check(lim, starts))
}

// TestRefundQuotaTwice: a duplicate refund must not return quota units
// twice, taking back units of other admissions in the same slot.
func TestRefundQuotaTwice(t *testing.T) {
	lim := bucket.PerSecond(1000).WithBurst(10).WithQuota(2, time.Hour)
	req := request(lim, 1, 0)
	var st driver.State
	starts := []backendtest.Start{{At: decide(t, &st, lim, 0, 1, 0).Start(), Cost: 1}}
	d := decide(t, &st, lim, 0, 1, 0)
	for range 2 {
		driver.Refund(&st, &req, d, time.Nanosecond)
	}
	n := 0
	for range 5 {
		if d := decide(t, &st, lim, time.Second, 1, 0); d.Allowed {
			n++
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
		}
	}
	assert.Equal(t, 1, n, "quota 2/h with one unit used and one refunded twice: admitted more")
	assert.NoError(t, backendtest.Check(lim, starts))
}

// TestUnbook: the refunds Unbook returns for consecutive admissions of a
// key, made in order, give every one of them back: the state is as it was
// before the first, quota slots included (a refund adds to the
// generation). Admissions before one that is not given back stay charged.
func TestUnbook(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lim     bucket.Limit
		refunds int // how many refunds Unbook returns for three admissions
	}{
		{"rate", bucket.PerSecond(10).WithBurst(5), 1},
		{"quotas", bucket.PerSecond(10).WithBurst(5).WithQuota(4, time.Hour), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admit := func(st *driver.State) driver.Admission {
				t.Helper()
				d := decide(t, st, tc.lim, 0, 1, 0)
				require.True(t, d.Allowed, "Decide refused")
				return driver.Admission{Request: request(tc.lim, 1, 0), Decision: d}
			}

			var st driver.State
			before := admit(&st) // stays charged
			want := cloneState(&st)
			a1, a2, a3 := admit(&st), admit(&st), admit(&st)
			give := driver.Unbook([]driver.Admission{a3, a2, a1})
			require.Len(t, give, tc.refunds, "refunds of three consecutive admissions")
			for _, a := range give {
				driver.Refund(&st, &a.Request, a.Decision, time.Nanosecond)
			}
			assert.Equal(t, want.TAT, st.TAT, "TAT after the refunds, against before the three")
			assert.Equal(t, want.Quotas, st.Quotas, "quotas after the refunds, against before the three")

			// Latest first, the admissions stop at one not given back:
			// before, with another admission between, stays charged.
			admit(&st)
			a4 := admit(&st)
			give = driver.Unbook([]driver.Admission{a4, before})
			if assert.Len(t, give, 1, "Unbook across a gap") {
				assert.Equal(t, a4.Decision.Booking, give[0].Decision.Booking, "Unbook across a gap gives back a4 alone")
			}
			assert.Nil(t, driver.Unbook(nil))
		})
	}
}

// TestUnbookAll: admissions of two keys, made interleaved, are all given
// back by the refunds UnbookAll returns, each key's state as it was
// before them, whatever order the keys were admitted in.
func TestUnbookAll(t *testing.T) {
	lim := bucket.PerSecond(10).WithBurst(5).WithQuota(4, time.Hour)
	states := map[string]*driver.State{"b": {}, "a": {}}
	want := map[string]driver.State{}
	for k, st := range states {
		decide(t, st, lim, 0, 1, 0) // stays charged: its quota state is kept
		want[k] = *cloneState(st)
	}
	var made []driver.Admission
	for _, k := range []string{"b", "a", "b", "a", "b"} {
		d := decide(t, states[k], lim, 0, 1, 0)
		require.True(t, d.Allowed, "Decide refused for %s", k)
		req := request(lim, 1, 0)
		req.Key = k
		made = append(made, driver.Admission{Request: req, Decision: d})
	}
	give := driver.UnbookAll(made)
	require.Len(t, give, 5, "refunds of five admissions under a quota")
	for _, a := range give {
		driver.Refund(states[a.Key], &a.Request, a.Decision, time.Nanosecond)
	}
	for k, st := range states {
		assert.Equal(t, want[k].TAT, st.TAT, "key %s: TAT after the refunds", k)
		assert.Equal(t, want[k].Quotas, st.Quotas, "key %s: quotas after the refunds", k)
	}
	assert.Len(t, made, 5, "UnbookAll changed its argument's length")
	assert.Equal(t, "b", made[0].Key, "UnbookAll reordered its argument")
	assert.Nil(t, driver.UnbookAll(nil))
}
