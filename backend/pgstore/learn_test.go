package pgstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

// TestLearnSweep: the sweep keeps the row of a key whose bucket is fresh
// while what it learned holds (an announced interval, or a pace until a
// reset), and deletes it once that has expired. What is learned is
// learned an hour behind the server's clock, which the sweep reads.
func TestLearnSweep(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	t0 := time.Now().Add(-time.Hour).UnixMicro()
	for _, tc := range []struct {
		key string
		fb  driver.Feedback
	}{
		{"expired", driver.Feedback{Interval: time.Second, TTL: time.Minute}},
		{"announced", driver.Feedback{Interval: time.Second, TTL: 2 * time.Hour}},
		{"paced", driver.Feedback{HasRemaining: true, Remaining: 10, Reset: 2 * time.Hour, TTL: time.Second}},
	} {
		_, _, err := pgstore.RawLearn(ctx, s, tc.key, lim, tc.fb, &t0)
		require.NoError(t, err, "Learn(%s) an hour ago", tc.key)
	}
	n, err := pgstore.Sweep(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, int64(1), n, "rows swept: the expired record's key")
	for key, rows := range map[string]int{"expired": 0, "announced": 1, "paced": 1} {
		assert.Equal(t, rows, count(t, s, s.Table(), key), "rows of %s after the sweep", key)
	}
	d, err := s.Admit(ctx, driver.Request{Key: "announced", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.Equal(t, time.Second, d.Interval, "Admit(announced) after the sweep: the interval learned an hour ago")
}

// TestUpgradeFromVersion2: a Store of this version upgrades a schema of
// version 2 at its first call, keeping its buckets; processes still on
// version 2 (decide_v2, which knows nothing of learned limits) go on
// working on it. They decide a learned limit at its ceiling, and write a
// key's row without what it learned: its record is kept, but the row's
// fresh_at is theirs, and once that has passed a sweep deletes the row
// and the key goes back to its own limit before its record expires. No
// key ever goes faster than its own limit.
func TestUpgradeFromVersion2(t *testing.T) {
	p := newPool(t)
	ctx := context.Background()
	s := newStore(t, p, pgstore.Options{SweepInterval: -1})
	require.NoError(t, pgstore.MigrateTo(ctx, s, 2), "install version 2")
	old := driver.Request{Key: "old", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	d, err := pgstore.AdmitV2(ctx, s, old, nil)
	require.NoError(t, err, "decide_v2 on version 2")
	require.True(t, d.Allowed, "decide_v2 on version 2")

	d, err = s.Admit(ctx, old)
	require.NoError(t, err, "Admit upgrading the schema")
	assert.False(t, d.Allowed, "second admission of 1/h: the bucket of version 2 was lost in the upgrade")
	var version int
	require.NoError(t, p.QueryRow(ctx, "SELECT version FROM "+strings.TrimSuffix(s.Table(), ".buckets")+".version").Scan(&version))
	assert.Equal(t, pgstore.SchemaVersion, version, "version after the upgrade")

	// Learned an hour behind the server's clock, for two hours: 1/s
	// where the limit's own rate is 100/s.
	t0 := time.Now().Add(-time.Hour).UnixMicro()
	lim := bucket.PerSecond(100).WithFloor(1, time.Second)
	req := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1, MaxWait: 2 * time.Second}
	_, _, err = pgstore.RawLearn(ctx, s, "k", req.Limit, driver.Feedback{Interval: time.Second, TTL: 2 * time.Hour}, &t0)
	require.NoError(t, err)
	d, _, err = pgstore.RawAdmit(ctx, s, req, &t0)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.Equal(t, time.Second, d.Interval, "decide_v3 applies what the key learned")
	d, err = pgstore.AdmitV2(ctx, s, req, &t0)
	require.NoError(t, err, "decide_v2 on version 3")
	require.True(t, d.Allowed, "decide_v2 books after the admission decide_v3 charged at 1/s")
	assert.Equal(t, time.Second, d.Wait, "decide_v2 honours the charge of the learned interval")
	assert.Equal(t, 10*time.Millisecond, d.Interval, "decide_v2 decides at the limit's own rate")
	require.Equal(t, 1, count(t, s, s.Table(), "k"), "the key's row after decide_v2")

	_, err = pgstore.Sweep(ctx, s)
	require.NoError(t, err)
	assert.Zero(t, count(t, s, s.Table(), "k"), "the key's row after decide_v2 wrote its own fresh_at and a sweep")
	d, err = s.Admit(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, d.Interval, "the key back at its own limit once its row was swept")
}

// TestLearnWhileDown: while PostgreSQL is unavailable, Learn of a learned
// limit answers by the failure policy: FailClosed an error, FailOpen the
// limit's own interval, FailLocal what the local buckets learn, which
// their admissions then apply. A fixed limit learns nothing and asks
// nothing, under every policy.
func TestLearnWhileDown(t *testing.T) {
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	fixed := backendtest.Limit(bucket.PerSecond(100))
	announced := driver.Feedback{Interval: 250 * time.Millisecond}
	for _, tc := range []struct {
		policy pgstore.FailurePolicy
		want   time.Duration
	}{
		{pgstore.FailClosed, 0},
		{pgstore.FailOpen, 10 * time.Millisecond},
		{pgstore.FailLocal, 250 * time.Millisecond},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			s := newStore(t, deadPool(t), pgstore.Options{Schema: "unused", FailurePolicy: tc.policy, RetryInterval: -1})
			iv, err := s.Learn(ctx, "k", fixed, announced)
			require.NoError(t, err, "Learn of a fixed limit")
			assert.Equal(t, 10*time.Millisecond, iv, "Learn of a fixed limit")

			iv, err = s.Learn(ctx, "k", lim, announced)
			if tc.policy == pgstore.FailClosed {
				assert.ErrorIs(t, err, pgstore.ErrUnavailable)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, iv, "Learn's interval")
			if tc.policy == pgstore.FailLocal {
				d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
				require.NoError(t, err)
				assert.True(t, pgstore.IsLocal(d), "an admission decided by the local buckets")
				assert.Equal(t, tc.want, d.Interval, "the local admission's interval: what the local buckets learned")
			}
		})
	}
}

// TestLearnInvalid: Learn refuses a key too long for the table, and
// after Close, before any round trip.
func TestLearnInvalid(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	_, err := s.Learn(ctx, strings.Repeat("k", pgstore.MaxKeyLen+1), lim, driver.Feedback{Throttled: true})
	assert.ErrorIs(t, err, pgstore.ErrKeyTooLong)
	s.Close()
	_, err = s.Learn(ctx, "k", lim, driver.Feedback{Throttled: true})
	assert.ErrorIs(t, err, driver.ErrClosed, "Learn after Close")
}

// TestFailLocalLearnAcrossOutage: under FailLocal, what a key learns
// while PostgreSQL answers is the database's alone, but for none
// remaining, which pauses the local bucket too (as Pause does), so that
// the pause outlives a failure; what it learns while the database is
// down, the local buckets learn and apply. A cluster of the test's own
// is stopped and started.
func TestFailLocalLearnAcrossOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops a PostgreSQL cluster")
	}
	srv := pgtest.Start(t)
	pool := pgtest.Pool(t, srv.URL()+"&connect_timeout=1")
	s := newStore(t, pool, pgstore.Options{FailurePolicy: pgstore.FailLocal, RetryInterval: -1, Timeout: time.Second})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	iv, err := s.Learn(ctx, "paused", lim, driver.Feedback{HasRemaining: true, Remaining: 0, Reset: time.Hour})
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, iv, "Learn(paused) with the database up")
	iv, err = s.Learn(ctx, "announced", lim, driver.Feedback{Interval: time.Second})
	require.NoError(t, err)
	assert.Equal(t, time.Second, iv, "Learn(announced) with the database up")

	require.NoError(t, srv.Stop())
	d, err := s.Admit(ctx, driver.Request{Key: "paused", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "the local bucket of a key paused by none remaining, with the database down")
	assert.Greater(t, d.Wait, 59*time.Minute, "the local bucket of a key paused by none remaining, with the database down")
	d, err = s.Admit(ctx, driver.Request{Key: "announced", Limit: lim, Cost: 1})
	require.NoError(t, err)
	require.True(t, pgstore.IsLocal(d), "admission with the database down: want decided locally")
	assert.Equal(t, 10*time.Millisecond, d.Interval, "the local bucket of a key that learned with the database up")
	iv, err = s.Learn(ctx, "announced", lim, driver.Feedback{Interval: 500 * time.Millisecond})
	require.NoError(t, err, "Learn with the database down")
	assert.Equal(t, 500*time.Millisecond, iv, "Learn with the database down: the local buckets'")
	d, err = s.Admit(ctx, driver.Request{Key: "announced", Limit: lim, Cost: 1, MaxWait: time.Second})
	require.NoError(t, err)
	assert.Equal(t, 500*time.Millisecond, d.Interval, "a local admission after the local buckets learned")
}
