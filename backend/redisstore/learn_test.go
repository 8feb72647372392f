package redisstore_test

import (
	"context"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/faulttest"
	"github.com/leakybucket/leakybucket/internal/paritytest"
)

// TestLearnedRecordLivesWithKey: a learned record is kept in the bucket's
// own key, which does not expire before the record does (the state's
// fresh moment includes it) and lingers at most about a second after; a
// state without a record is the 34 bytes it always was, and an expired
// record is dropped by the key's next write.
func TestLearnedRecordLivesWithKey(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	ctx := context.Background()
	c := s.Client()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	size := func(key string) int64 {
		t.Helper()
		n, err := c.StrLen(ctx, s.RedisKey(key)).Result()
		require.NoError(t, err)
		return n
	}

	d, _, err := redisstore.RawAdmit(ctx, s, driver.Request{Key: "plain", Limit: lim, Cost: 1})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	assert.Equal(t, int64(34), size("plain"), "a state without quotas nor a learned record")

	iv, fresh, err := redisstore.RawLearn(ctx, s, "learned", lim, driver.Feedback{Interval: 200 * time.Millisecond, TTL: time.Hour})
	require.NoError(t, err)
	assert.Equal(t, 200*time.Millisecond, iv)
	assert.Equal(t, int64(34+1+7*8), size("learned"), "a state with a learned record")
	pttl, err := c.PTTL(ctx, s.RedisKey("learned")).Result()
	require.NoError(t, err)
	now, err := c.Time(ctx).Result()
	require.NoError(t, err)
	left := time.Duration(fresh-now.UnixMicro()) * time.Microsecond
	assert.InDelta(t, time.Hour, left, float64(time.Minute), "the state's fresh moment: the record's Until")
	assert.GreaterOrEqual(t, pttl, left-5*time.Millisecond, "the key's expiry, its record expiring in %v: want no sooner", left)
	// TIME is read after PTTL: the bound allows for the time between them.
	assert.LessOrEqual(t, pttl, left+time.Second+100*time.Millisecond, "the key's expiry, its record expiring in %v: want at most a second later", left)

	// On a test clock: the record expires, and the next write drops it.
	var at int64 = 1_700_000_000_000_000
	fake := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	redisstore.SetClock(fake, func() int64 { return at })
	_, _, err = redisstore.RawLearn(ctx, fake, "k", lim, driver.Feedback{Interval: 200 * time.Millisecond, TTL: time.Second})
	require.NoError(t, err)
	d, _, err = redisstore.RawAdmit(ctx, fake, driver.Request{Key: "k", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.Equal(t, 200*time.Millisecond, d.Interval, "an admission within the record's TTL")
	at += 2_000_000
	d, _, err = redisstore.RawAdmit(ctx, fake, driver.Request{Key: "k", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, d.Interval, "an admission after the record expired")
	n, err := fake.Client().StrLen(ctx, fake.RedisKey("k")).Result()
	require.NoError(t, err)
	assert.Equal(t, int64(34), n, "the state after its record expired")
}

// TestLearnBatch: admissions of learned limits decided in batches, many
// per script call, over keys that learned various things, and of fixed
// limits among them (whose requests and replies are shorter), match
// driver.Decide run on the requests in batch order, intervals included.
func TestLearnBatch(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	var now int64 = 1_700_000_000_000_000 // µs
	redisstore.SetClock(s, func() int64 { return now })
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(16, 1))
	keys := []string{"learn-a", "learn-b", "learn-c", "learn-d"}
	limits := map[string]bucket.Limit{}
	states := map[string]*driver.State{}
	for i, k := range keys {
		limits[k] = paritytest.RandomLimit(rng)
		if i < 3 {
			limits[k] = paritytest.WithRandomFloor(rng, limits[k])
		}
		states[k] = new(driver.State)
	}
	forget := func(st *driver.State) {
		if driver.FreshAt(st) <= now {
			*st = driver.State{}
		}
	}
	var slower, sized int
	for round := range 40 {
		for _, k := range keys {
			if rng.IntN(2) == 0 || !limits[k].IsLearned() {
				continue
			}
			st, lim := states[k], backendtest.Limit(limits[k])
			forget(st)
			fb := paritytest.RandomFeedback(rng, st.Gen)
			want := driver.Learn(st, &lim, &fb, time.Microsecond, now)
			got, _, err := redisstore.RawLearn(ctx, s, k, lim, fb)
			require.NoError(t, err, "round %d: Learn(%s, %+v)", round, k, fb)
			require.Equal(t, want, got, "round %d: Learn(%s, %+v): Go's interval (expected), the script's (actual)", round, k, fb)
		}
		batch := make([]driver.Admission, 1+rng.IntN(150))
		for i := range batch {
			k := keys[rng.IntN(len(keys))]
			lim := limits[k]
			batch[i].Request = driver.Request{Key: k, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(paritytest.MaxCost(lim)), MaxWait: paritytest.RandomWait(rng, lim)}
		}
		s.AdmitBatch(ctx, batch)
		for i, a := range batch {
			st := states[a.Key]
			forget(st)
			want, err := driver.Decide(st, &a.Request, time.Microsecond, now)
			require.NoError(t, err)
			require.NoError(t, a.Err, "round %d batch[%d]", round, i)
			require.Equal(t, want, a.Decision, "round %d batch[%d] (%s, %v, cost %d): Go's decision (expected), the batch's (actual)", round, i, a.Key, a.Limit, a.Cost)
			if want.Interval != time.Duration(a.Terms(time.Microsecond).Interval)*time.Microsecond {
				slower++
			}
		}
		sized += len(batch)
		now += rng.Int64N(200_000)
	}
	require.True(t, slower > 0 && slower < sized, "%d of %d decisions at a learned interval: the test exercised only one kind", slower, sized)
}

// TestLearnSpan: a learned interval whose charge reaches the span
// (driver.MaxDuration) is clamped to it, and the capacity with it, as in
// driver.Decide.
func TestLearnSpan(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	var now int64 = 1_700_000_000_000_000
	redisstore.SetClock(s, func() int64 { return now })
	ctx := context.Background()
	lim := driver.Limit{Rate: 4, Period: driver.MaxDuration, Burst: 4, FloorRate: 1, FloorPeriod: driver.MaxDuration}
	var st driver.State
	fb := driver.Feedback{Interval: driver.MaxDuration, TTL: driver.MaxDuration}
	want := driver.Learn(&st, &lim, &fb, time.Microsecond, now)
	got, _, err := redisstore.RawLearn(ctx, s, "span", lim, fb)
	require.NoError(t, err)
	require.Equal(t, want, got)
	for i, cost := range []int64{2, 1, 1} {
		req := driver.Request{Key: "span", Limit: lim, Cost: cost, MaxWait: driver.MaxDuration}
		want, err := driver.Decide(&st, &req, time.Microsecond, now)
		require.NoError(t, err)
		got, _, err := redisstore.RawAdmit(ctx, s, req)
		require.NoError(t, err)
		require.Equal(t, want, got, "admission %d, cost %d: Go's decision (expected), the script's (actual)", i, cost)
	}
}

// TestLearnLeased: an admission of a learned limit with an inflight cap
// applies what its key learned, and at the cap is refused with Interval
// 0, as driver.DecideLeased decides.
func TestLearnLeased(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	var now int64 = 1_700_000_000_000_000
	redisstore.SetClock(s, func() int64 { return now })
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithBurst(3).WithInflight(2).WithFloor(1, time.Second))
	var (
		st driver.State
		ls driver.Leases
	)
	fb := driver.Feedback{Interval: 50 * time.Millisecond}
	want := driver.Learn(&st, &lim, &fb, time.Microsecond, now)
	got, _, err := redisstore.RawLearn(ctx, s, "leased", lim, fb)
	require.NoError(t, err)
	require.Equal(t, want, got)
	for i, id := range []driver.LeaseID{"a", "b", "c"} {
		req := driver.Request{Key: "leased", Limit: lim, Cost: 1, MaxWait: time.Second, Lease: id}
		want, err := driver.DecideLeased(&st, &ls, &req, time.Microsecond, now)
		require.NoError(t, err)
		got, _, err := redisstore.RawAdmit(ctx, s, req)
		require.NoError(t, err)
		require.Equal(t, want, got, "admission %d, lease %s: Go's decision (expected), the script's (actual)", i, id)
	}
	assert.True(t, st.Learned != nil && ls.Count(now) == 2, "the test took two leases of a key that learned")
}

// TestLearnWhileDown: what each failure policy answers to Learn while
// Redis is down (faulttest.LearnWhileDown).
func TestLearnWhileDown(t *testing.T) {
	for _, policy := range []redisstore.FailurePolicy{redisstore.FailClosed, redisstore.FailOpen, redisstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) {
			faulttest.LearnWhileDown(t, policy.String(), down(t, newStore(t, deadClient(t), redisstore.Options{FailurePolicy: policy})))
		})
	}
}

// TestLearnedStatesAndEarlierVersions: a process of a version before
// learned limits (testdata/gcra-before-learn.lua) shares the keys that
// hold no learned record, and fails on one that holds a record, with an
// error that says so, rather than misread it or drop it: the record
// still holds for this version's processes.
func TestLearnedStatesAndEarlierVersions(t *testing.T) {
	earlier, err := os.ReadFile("testdata/gcra-before-learn.lua")
	require.NoError(t, err)
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	req := driver.Request{Key: "k", Limit: lim, Cost: 1}
	_, err = s.Learn(ctx, "k", lim, driver.Feedback{Interval: 200 * time.Millisecond, TTL: time.Hour})
	require.NoError(t, err)
	before, err := s.Client().Get(ctx, s.RedisKey("k")).Result()
	require.NoError(t, err)

	fixed := req
	fixed.Limit = backendtest.Limit(bucket.PerSecond(100))
	_, err = redisstore.AdmitWith(ctx, s, string(earlier), fixed)
	require.Error(t, err, "the earlier version's admission on a key with a learned record")
	assert.Contains(t, err.Error(), "Bad data format in input")
	after, err := s.Client().Get(ctx, s.RedisKey("k")).Result()
	require.NoError(t, err)
	assert.Equal(t, before, after, "the state after the earlier version's attempt")

	d, err := s.Admit(ctx, req)
	require.NoError(t, err)
	assert.True(t, d.Allowed)
	assert.Equal(t, 200*time.Millisecond, d.Interval, "this version's admission after the earlier version's attempt")
}

// TestLearnClosed: Learn after Close returns ErrClosed; with a cancelled
// context, the context's error, and nothing is learned.
func TestLearnClosed(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{})
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Learn(ctx, "k", lim, driver.Feedback{Interval: time.Second})
	assert.ErrorIs(t, err, context.Canceled, "Learn with a cancelled ctx")
	d, err := s.Admit(context.Background(), driver.Request{Key: "k", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, d.Interval, "an admission after a cancelled Learn")
	s.Close()
	_, err = s.Learn(context.Background(), "k", lim, driver.Feedback{Interval: time.Second})
	assert.ErrorIs(t, err, driver.ErrClosed, "Learn after Close")
}
