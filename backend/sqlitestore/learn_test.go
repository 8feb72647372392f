package sqlitestore_test

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/paritytest"
)

// microClock is a store's clock in Unix µs that a test sets.
type microClock struct{ now atomic.Int64 }

func (c *microClock) Now() time.Time { return time.UnixMicro(c.now.Load()) }

// freshAt returns the fresh_at of key's row in db, 0 without a row.
func freshAt(db *sql.DB, key string) (int64, error) {
	var fresh int64
	err := db.QueryRow("SELECT fresh_at FROM buckets WHERE key = ?", []byte(key)).Scan(&fresh)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return fresh, err
}

// TestParity feeds the same random sequences of admissions, refunds,
// pauses and learning to driver.Decide, Refund, Pause and Learn and to a
// store on a fake clock, and requires identical decisions, intervals and
// fresh moments: what a key learned goes through its row intact. Before
// each call the store sweeps, forgetting what Go forgets.
func TestParity(t *testing.T) {
	var clock microClock
	var (
		s  *sqlitestore.Store
		db *sql.DB
	)
	// Each sequence starts at a time of its own, earlier or later than
	// the last: a file of its own, so that the store's clock, which never
	// runs back, is the sequence's.
	fresh := func() {
		path := filepath.Join(t.TempDir(), "b.db")
		s, db = open(t, path, sqlitestore.Options{Now: clock.Now, SweepInterval: -1}), rawDB(t, path)
	}
	fresh()
	ctx := context.Background()
	at := func(now int64) {
		t.Helper()
		clock.now.Store(now)
		require.NoError(t, s.Sweep(ctx), "Sweep")
	}
	sequences := 100
	if testing.Short() {
		sequences = 25
	}
	paritytest.Sequences(t, paritytest.Target{
		Admit: func(req driver.Request, now int64) (driver.Decision, int64, error) {
			at(now)
			d, err := s.Admit(ctx, req)
			if err != nil {
				return d, 0, err
			}
			fresh, err := freshAt(db, req.Key)
			return d, fresh, err
		},
		Refund: func(req driver.Request, d driver.Decision, now int64) (int64, error) {
			at(now)
			if err := s.Refund(ctx, req, d); err != nil {
				return 0, err
			}
			return freshAt(db, req.Key)
		},
		Pause: func(key string, d time.Duration, now int64) (int64, error) {
			at(now)
			if err := s.Pause(ctx, key, d); err != nil {
				return 0, err
			}
			return freshAt(db, key)
		},
		Learn: func(key string, lim driver.Limit, fb driver.Feedback, now int64) (time.Duration, int64, error) {
			at(now)
			iv, err := s.Learn(ctx, key, lim, fb)
			if err != nil {
				return 0, 0, err
			}
			fresh, err := freshAt(db, key)
			return iv, fresh, err
		},
		Forget: func(string) {
			require.NoError(t, s.Close())
			require.NoError(t, db.Close())
			fresh()
		},
	}, sequences, 120)
}

// TestLearnBatch: batches of requests of keys that learn between them
// get the decisions of driver.Decide run in batch order on what Go
// learned, intervals included.
func TestLearnBatch(t *testing.T) {
	var clock microClock
	s := open(t, filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{Now: clock.Now, SweepInterval: -1})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(5, 11))
	keys := []string{"learn-a", "learn-b", "learn-c", "learn-d"}
	limits := map[string]bucket.Limit{}
	states := map[string]*driver.State{}
	for _, k := range keys {
		limits[k] = paritytest.WithRandomFloor(rng, paritytest.RandomLimit(rng))
		states[k] = new(driver.State)
	}
	now := int64(1_700_000_000_000_000)
	learned := 0
	for round := range 60 {
		clock.now.Store(now)
		require.NoError(t, s.Sweep(ctx), "Sweep")
		for _, k := range keys {
			if st := states[k]; driver.FreshAt(st) <= now {
				*st = driver.State{}
			}
		}
		for _, k := range keys {
			if rng.IntN(3) != 0 {
				continue
			}
			lim, st := backendtest.Limit(limits[k]), states[k]
			fb := paritytest.RandomFeedback(rng, st.Gen)
			want := driver.Learn(st, &lim, &fb, time.Microsecond, now)
			got, err := s.Learn(ctx, k, lim, fb)
			require.NoError(t, err, "round %d: Learn(%s, %+v)", round, k, fb)
			require.Equal(t, want, got, "round %d: Learn(%s, %v, %+v): Go's interval (expected), the store's (actual)", round, k, limits[k], fb)
		}
		batch := make([]driver.Admission, 1+rng.IntN(100))
		for i := range batch {
			k := keys[rng.IntN(len(keys))]
			lim := limits[k]
			batch[i].Request = driver.Request{Key: k, Limit: backendtest.Limit(lim), Cost: 1 + rng.Int64N(paritytest.MaxCost(lim)), MaxWait: paritytest.RandomWait(rng, lim)}
		}
		s.AdmitBatch(ctx, batch)
		for i, a := range batch {
			want, err := driver.Decide(states[a.Key], &a.Request, time.Microsecond, now)
			require.NoError(t, err, "round %d batch[%d]: Decide", round, i)
			require.NoError(t, a.Err, "round %d batch[%d]: AdmitBatch", round, i)
			require.Equal(t, want, a.Decision, "round %d batch[%d] (%s, %v, cost %d): Go's decision (expected), the batch's (actual)", round, i, a.Key, a.Limit, a.Cost)
			if want.Interval != limits[a.Key].Interval().Round(time.Microsecond) && want.Interval != 0 {
				learned++
			}
		}
		now += rng.Int64N(300_000)
	}
	assert.NotZero(t, learned, "no decision applied a learned interval: the test exercised nothing")
}

// TestLearnedRow: a key's learned record lives in its row and keeps it
// until the record expires, even with its bucket full; a malformed
// record fails its key's calls with ErrCorrupt and no other key's.
func TestLearnedRow(t *testing.T) {
	var clock microClock
	clock.now.Store(1_700_000_000_000_000)
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{Now: clock.Now, SweepInterval: -1})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	iv, err := s.Learn(ctx, "k", lim, driver.Feedback{Interval: 200 * time.Millisecond, TTL: time.Minute})
	require.NoError(t, err)
	assert.Equal(t, 200*time.Millisecond, iv)
	db := rawDB(t, path)
	var state []byte
	require.NoError(t, db.QueryRow("SELECT quotas FROM buckets WHERE key = ?", []byte("k")).Scan(&state))
	assert.NotEmpty(t, state, "the quotas column of the key's row, which holds the record")

	clock.now.Add(int64(59 * time.Second / time.Microsecond))
	require.NoError(t, s.Sweep(ctx))
	has, err := s.Has(ctx, "k")
	require.NoError(t, err)
	assert.True(t, has, "the key was forgotten before its record expired")
	d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.Equal(t, 200*time.Millisecond, d.Interval, "the record read back")

	clock.now.Add(int64(2 * time.Second / time.Microsecond))
	require.NoError(t, s.Sweep(ctx))
	has, err = s.Has(ctx, "k")
	require.NoError(t, err)
	assert.False(t, has, "the key was kept after its record expired and its bucket filled")

	_, err = s.Learn(ctx, "k", lim, driver.Feedback{Throttled: true})
	require.NoError(t, err)
	_, err = s.Learn(ctx, "other", lim, driver.Feedback{Throttled: true})
	require.NoError(t, err)
	for _, blob := range [][]byte{{2, 0x80}, {2, 2, 2, 2, 2, 2, 2}, {2, 2, 2, 2, 2, 2, 2, 2, 0}, {2, 1, 2, 2, 2, 2, 2, 2}, {2, 2, 2, 2, 2, 2, 2, 2, 9}} {
		_, err := db.Exec("UPDATE buckets SET quotas = ? WHERE key = ?", blob, []byte("k"))
		require.NoError(t, err)
		_, err = s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
		wantErr(t, "Admit of a malformed learned record", err, sqlitestore.ErrCorrupt)
		_, err = s.Learn(ctx, "k", lim, driver.Feedback{})
		wantErr(t, "Learn of a malformed learned record", err, sqlitestore.ErrCorrupt)
	}
	d, err = s.Admit(ctx, driver.Request{Key: "other", Limit: lim, Cost: 1})
	require.NoError(t, err, "another key")
	assert.Greater(t, d.Interval, 10*time.Millisecond, "another key's record")
}

// TestLearnClosed: Learn after Close returns ErrClosed.
func TestLearnClosed(t *testing.T) {
	s, err := sqlitestore.Open(filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	_, err = s.Learn(context.Background(), "k", backendtest.Limit(bucket.PerSecond(10).WithFloor(1, time.Second)), driver.Feedback{Throttled: true})
	assert.ErrorIs(t, err, driver.ErrClosed)
}

// TestLearnLocked: a Learn that cannot take the write lock fails with
// ErrLocked and learns nothing.
func TestLearnLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{BusyTimeout: 20 * time.Millisecond})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	holder := holdLock(t, path)
	_, err := s.Learn(ctx, "k", lim, driver.Feedback{Interval: time.Second})
	wantErr(t, "Learn while locked", err, sqlitestore.ErrLocked)
	_, err = holder.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err)
	d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, d.Interval, "the interval after a failed Learn")
}
