package backendtest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// testPause: a pause, made through either handle, holds its key and no
// other until it ends; a shorter pause never shortens it.
func (s *suite) testPause(t *testing.T) {
	b := s.cfg.New(t)
	peer := s.peer(t, b)
	ctx := context.Background()
	key, other := s.key(t, "paused"), s.key(t, "other")
	lim := bucket.PerSecond(100).WithBurst(3)
	const pause = 300 * time.Millisecond

	before := s.now(t, b)
	require.NoError(t, peer.Pause(ctx, key, pause), "Pause(%q, %v)", key, pause)
	after := s.now(t, b)
	require.NoError(t, b.Pause(ctx, key, time.Millisecond), "Pause(%q, 1ms)", key)

	d := admit(t, b, req(key, lim, 1, 0))
	require.False(t, d.Allowed, "admission during the pause allowed")
	assert.GreaterOrEqual(t, time.Duration(d.Start()-before), pause, "refusal during the pause: admissible this long after the pause began")
	d = admit(t, b, req(key, lim, 1, 5*time.Second))
	require.True(t, d.Allowed, "admission with maxWait 5s during a 300ms pause refused")
	// The pause began between before and after: the start is 300ms after
	// it (a shorter pause must not shorten it).
	assert.GreaterOrEqual(t, d.Start(), before+int64(pause), "booked start, in the backend's clock, before the 300ms pause can have ended")
	assert.LessOrEqual(t, d.Start(), after+int64(pause), "booked start, in the backend's clock, later than the 300ms pause can have ended")
	assert.Equal(t, allowedAtOnce, verdictOf(admit(t, b, req(other, lim, 1, 0))), "another key during the pause")
	assert.ErrorIs(t, b.Pause(ctx, "", time.Second), bucket.ErrEmptyKey, `Pause("", 1s)`)
}

// testRefund: a refund gives back the key's latest admission, rate and
// quota, once; it does nothing for an admission a later one depends on,
// for one refunded already, or for a refusal.
func (s *suite) testRefund(t *testing.T) {
	b := s.cfg.New(t)
	peer := s.peer(t, b)
	key := s.key(t, "rate")
	lim := bucket.PerSecond(1)
	r := req(key, lim, 1, 10*time.Second)
	d1 := admit(t, b, r)
	d2 := admit(t, b, r)
	refund(t, peer, r, d2)
	d3 := admit(t, b, r)
	require.Equal(t, time.Duration(d2.Start()-d1.Start()), time.Duration(d3.Start()-d1.Start()),
		"after refunding the last booking, the next takes its slot: start after the first")
	// d3 took d2's slot: refunding d2 again must not free it.
	refund(t, peer, r, d2)
	d4 := admit(t, b, r)
	require.Equal(t, time.Second, time.Duration(d4.Start()-d3.Start()),
		"a second refund of a booking whose slot was taken again freed it: start after d3")
	// d4 depends on d3: refunding d3 must not free its slot.
	refund(t, b, r, d3)
	refund(t, b, r, d3)
	refund(t, b, r, driver.Decision{}) // a refusal
	d5 := admit(t, b, r)
	assert.Equal(t, time.Second, time.Duration(d5.Start()-d4.Start()),
		"refunding a booking a later one depends on moved the next start: start after d4")

	key = s.key(t, "quota")
	lim = bucket.PerSecond(1000).WithBurst(10).WithQuota(2, time.Hour)
	r = req(key, lim, 1, 0)
	admit(t, b, r)
	d := admit(t, b, r)
	require.False(t, admit(t, b, r).Allowed, "third admission of quota 2 allowed")
	refund(t, b, r, d)
	refund(t, b, r, d) // the second refund of the same admission does nothing
	assert.True(t, admit(t, b, r).Allowed, "after a quota refund, admission refused")
	assert.False(t, admit(t, b, r).Allowed, "after a refund of one unit, two admitted")
}

// testRefundJoined: a refund of consecutive admissions joined into one
// booking gives them all back; a booking joined across another process's
// admission is refused, so that it cannot give that one back too; refunds
// unwound one after the other give back quota units too.
func (s *suite) testRefundJoined(t *testing.T) {
	b := s.cfg.New(t)
	peer := s.peer(t, b)
	r := req(s.key(t, "k"), bucket.PerSecond(1), 1, 10*time.Second)
	d1, d2, d3 := admit(t, b, r), admit(t, b, r), admit(t, b, r)
	joined, ok := d3.Booking.Join(d2.Booking)
	require.True(t, ok, "Join of consecutive admissions %+v and %+v refused", d2.Booking, d3.Booking)
	d := d3
	d.Booking = joined
	refund(t, peer, r, d)
	d4 := admit(t, b, r)
	require.Equal(t, time.Duration(d2.Start()-d1.Start()), time.Duration(d4.Start()-d1.Start()),
		"after refunding the last two admissions, the next takes the second's slot: start after the first")

	r = req(s.key(t, "between"), bucket.PerSecond(1), 1, 10*time.Second)
	e1 := admit(t, b, r)
	e2 := admit(t, peer, r)
	e3 := admit(t, b, r)
	_, ok = e3.Booking.Join(e1.Booking)
	require.False(t, ok, "Join across another admission (%+v, then %+v, then %+v) accepted", e1.Booking, e2.Booking, e3.Booking)
	_, ok = e3.Booking.Join(e2.Booking)
	require.True(t, ok, "Join of consecutive admissions of two processes %+v and %+v refused", e2.Booking, e3.Booking)

	// Refunds unwound one after the other, latest first, give back quota
	// units too.
	r = req(s.key(t, "quota"), bucket.PerSecond(1000).WithBurst(10).WithQuota(3, time.Hour), 1, 0)
	q1, q2, q3 := admit(t, b, r), admit(t, b, r), admit(t, b, r)
	require.False(t, admit(t, b, r).Allowed, "a fourth admission under a quota of 3 allowed")
	u2, ok2 := q3.Booking.Unwound(q2.Booking)
	w2 := q2
	w2.Booking = u2
	u1, ok1 := u2.Unwound(q1.Booking)
	w1 := q1
	w1.Booking = u1
	require.True(t, ok1 && ok2, "Unwound of consecutive admissions %+v, %+v, %+v refused", q1.Booking, q2.Booking, q3.Booking)
	for _, d := range []driver.Decision{q3, w2, w1} {
		refund(t, peer, r, d)
	}
	for i := range 3 {
		require.True(t, admit(t, b, r).Allowed, "after three unwound refunds, admission %d of the quota of 3 refused", i+1)
	}
	assert.False(t, admit(t, b, r).Allowed, "after three unwound refunds, four admitted under a quota of 3")

	// An admission of another process between two unwound refunds makes
	// the second do nothing: it must not give that admission back.
	r = req(s.key(t, "unwound-between"), bucket.PerSecond(1), 1, 10*time.Second)
	p1, p2 := admit(t, b, r), admit(t, b, r)
	u, _ := p2.Booking.Unwound(p1.Booking)
	refund(t, b, r, p2)
	p3 := admit(t, peer, r) // takes p2's slot again
	w := p1
	w.Booking = u
	refund(t, b, r, w)
	p4 := admit(t, b, r)
	assert.Equal(t, time.Second, time.Duration(p4.Start()-p3.Start()),
		"an unwound refund after another process's admission gave back slots: start after p3")
}

// refund calls b.Refund and fails the test on an error.
func refund(t *testing.T, b driver.Backend, r driver.Request, d driver.Decision) {
	t.Helper()
	require.NoError(t, b.Refund(context.Background(), r, d), "Refund(%q, %+v)", r.Key, d)
}
