package sqlitestore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open opens a store on path, closed when t ends.
func open(t testing.TB, path string, opts sqlitestore.Options) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(path, opts)
	require.NoError(t, err, "Open(%q)", path)
	t.Cleanup(func() { assert.NoError(t, s.Close(), "Close") })
	return s
}

func TestConformance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buckets.db")
	backendtest.Run(t, backendtest.Config{
		New: func(t *testing.T) driver.Backend {
			return open(t, path, sqlitestore.Options{})
		},
		Peer: func(t *testing.T, b driver.Backend) driver.Backend {
			return open(t, b.(*sqlitestore.Store).Path(), sqlitestore.Options{})
		},
		Forgotten: func(t *testing.T, b driver.Backend, key string) bool {
			t.Helper()
			s := b.(*sqlitestore.Store)
			require.NoError(t, s.Sweep(t.Context()), "Sweep")
			has, err := s.Has(t.Context(), key)
			require.NoError(t, err, "Has")
			return !has
		},
	})
}

// TestIncrementalSweep checks that write transactions delete idle rows as
// they go, with no sweep run: guarantee 8 without a stalling sweep.
func TestIncrementalSweep(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{Now: clock.Now, SweepInterval: -1})
	ctx := context.Background()
	short := bucket.PerSecond(1000) // fresh 1ms after an admission
	for i := range 100 {
		_, err := s.Admit(ctx, driver.Request{Key: fmt.Sprint("idle-", i), Limit: backendtest.Limit(short), Cost: 1})
		require.NoError(t, err)
	}
	n, err := s.Len(ctx)
	require.NoError(t, err)
	require.Equal(t, 100, n, "Len")
	clock.Add(time.Second)
	busy := bucket.PerSecond(1_000_000).WithBurst(1_000_000)
	for i := range 100 {
		_, err := s.Admit(ctx, driver.Request{Key: fmt.Sprint("busy-", i), Limit: backendtest.Limit(busy), Cost: 1})
		require.NoError(t, err)
	}
	// 100 rows written examine 200 rows: every idle row has been seen.
	n, err = s.Len(ctx)
	require.NoError(t, err)
	assert.Equal(t, 100, n, "rows left after 100 rows written: want the 100 busy ones (the 100 idle ones deleted)")
	for i := range 100 {
		has, err := s.Has(ctx, fmt.Sprint("busy-", i))
		require.NoError(t, err)
		require.True(t, has, "busy key %d: want its row kept", i)
	}
}

// TestRefusalWritesNothing checks that a refused admission leaves the
// key's row as it was.
func TestRefusalWritesNothing(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{Now: clock.Now})
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	d, err := s.Admit(ctx, r)
	require.NoError(t, err)
	require.True(t, d.Allowed, "first Admit")
	db, err := rawDB(t, path).Conn(ctx) // data_version counts other connections' commits
	require.NoError(t, err)
	defer db.Close()
	row := func() (seen int64, changes int64) {
		t.Helper()
		require.NoError(t, db.QueryRowContext(ctx, "SELECT seen FROM buckets WHERE key = CAST('k' AS BLOB)").Scan(&seen))
		require.NoError(t, db.QueryRowContext(ctx, "PRAGMA data_version").Scan(&changes))
		return seen, changes
	}
	seen, version := row()
	clock.Add(time.Minute)
	for range 10 {
		d, err := s.Admit(ctx, r)
		require.NoError(t, err)
		require.False(t, d.Allowed, "Admit within the hour")
	}
	seen2, version2 := row()
	assert.Equal(t, seen, seen2, "seen after refusals")
	assert.Equal(t, version, version2, "data_version after refusals")
}

// TestRefusalKeepsReshape: a refusal under a limit without the quota of
// an earlier one drops that quota's usage, as driver.Decide does, so that
// the first limit, back, finds none.
func TestRefusalKeepsReshape(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{Now: clock.Now, SweepInterval: -1})
	ctx := context.Background()
	quota := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1).WithQuota(1, time.Hour)), Cost: 1}
	slow := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	var want driver.State
	for i, step := range []struct {
		req   driver.Request
		after time.Duration
	}{{quota, 0}, {slow, 0}, {quota, 2 * time.Second}} {
		clock.Add(step.after)
		now := clock.Now().UnixMicro()
		d, err := s.Admit(ctx, step.req)
		require.NoError(t, err)
		w, err := driver.Decide(&want, &step.req, time.Microsecond, now)
		require.NoError(t, err)
		assert.Equal(t, w, d, "step %d: driver.Decide's decision (expected), the store's (actual)", i)
	}
}
