package sqlitestore

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// TestSchemaVersionIsLatest: the exported version is where the migrations
// lead.
func TestSchemaVersionIsLatest(t *testing.T) {
	assert.Equal(t, latestVersion(), SchemaVersion, "SchemaVersion: want the version the migrations lead to")
}

// TestConnectionSettings: the store's connection runs with the settings
// its documentation promises.
func TestConnectionSettings(t *testing.T) {
	for _, full := range []bool{false, true} {
		s, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{FullSync: full, SweepInterval: -1})
		require.NoError(t, err)
		ctx := context.Background()
		var mode string
		var sync, checkpoint int
		require.NoError(t, s.conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode))
		require.NoError(t, s.conn.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync))
		require.NoError(t, s.conn.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&checkpoint))
		want := 1 // NORMAL
		if full {
			want = 2 // FULL
		}
		assert.Equal(t, "wal", mode, "FullSync %v: journal_mode", full)
		assert.Equal(t, want, sync, "FullSync %v: synchronous", full)
		assert.Zero(t, checkpoint, "FullSync %v: wal_autocheckpoint", full)
		assert.Equal(t, 1, s.db.Stats().MaxOpenConnections, "connections in the pool: SQLite has one writer")
		s.Close()
	}
}

// TestMigrateUpgrade: a file of the previous schema version is brought up
// to date when opened, and keeps its buckets.
func TestMigrateUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s, err := Open(path, Options{SweepInterval: -1})
	require.NoError(t, err)
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1, MaxWait: time.Hour}
	first, err := s.Admit(ctx, req)
	require.NoError(t, err)
	s.Close()

	saved := migrations
	t.Cleanup(func() { migrations = saved })
	migrations = append(migrations[:len(migrations):len(migrations)], []string{`CREATE TABLE notes (id INTEGER PRIMARY KEY)`})

	s, err = Open(path, Options{SweepInterval: -1})
	require.NoError(t, err, "Open of a version %d file", SchemaVersion)
	defer s.Close()
	var version, notes int
	require.NoError(t, s.conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version))
	require.NoError(t, s.conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE name = 'notes'").Scan(&notes))
	assert.Equal(t, SchemaVersion+1, version, "user_version after the upgrade")
	assert.Equal(t, 1, notes, "notes tables after the upgrade")
	next, err := s.Admit(ctx, req)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Duration(next.Start()-first.Start()), time.Second, "next start after the upgrade, from the first: the bucket restarted")
}

// TestMigrateLeases: a file of schema version 1, written before leases,
// gains the leases table when opened, keeps its buckets, and takes
// leases.
func TestMigrateLeases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	ctx := context.Background()
	for _, stmt := range migrations[1] {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	busy := time.Now().Add(time.Hour).UnixMicro()
	for _, stmt := range []string{
		"PRAGMA application_id = " + strconv.Itoa(applicationID),
		"PRAGMA user_version = 1",
		"INSERT INTO buckets (key, tat, paused, gen, seen, fresh_at) VALUES (CAST('k' AS BLOB), " +
			strconv.FormatInt(busy, 10) + ", 0, 0, 0, " + strconv.FormatInt(busy, 10) + ")",
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	require.NoError(t, db.Close())

	s, err := Open(path, Options{SweepInterval: -1})
	require.NoError(t, err, "Open of a version 1 file")
	defer s.Close()
	var version, leases int
	require.NoError(t, s.conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version))
	require.NoError(t, s.conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE name = 'leases'").Scan(&leases))
	assert.Equal(t, SchemaVersion, version, "user_version after the upgrade")
	assert.Equal(t, 1, leases, "leases tables after the upgrade")
	lim := backendtest.Limit(bucket.PerSecond(1).WithInflight(1))
	d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1, Lease: "a"})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "the bucket booked an hour ahead in the version 1 file admitted at once")
	d, err = s.Admit(ctx, driver.Request{Key: "other", Limit: lim, Cost: 1, Lease: "a"})
	require.NoError(t, err)
	assert.True(t, d.Allowed, "a lease after the upgrade")
}

// TestMigrateLearned: a file of schema version 2, written before learned
// limits, is of version 3 once opened, keeps its buckets and learns; a
// program of version 2 then refuses to open it.
func TestMigrateLearned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v2.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	ctx := context.Background()
	busy := strconv.FormatInt(time.Now().Add(time.Hour).UnixMicro(), 10)
	for _, stmt := range append(slices.Concat(migrations[1], migrations[2]),
		"PRAGMA application_id = "+strconv.Itoa(applicationID),
		"PRAGMA user_version = 2",
		"INSERT INTO buckets (key, tat, paused, gen, seen, fresh_at) VALUES (CAST('k' AS BLOB), "+busy+", 0, 3, 0, "+busy+")",
	) {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	require.NoError(t, db.Close())

	s, err := Open(path, Options{SweepInterval: -1})
	require.NoError(t, err, "Open of a version 2 file")
	defer s.Close()
	var version int
	require.NoError(t, s.conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version))
	assert.Equal(t, SchemaVersion, version, "user_version after the upgrade")
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	d, err := s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "the bucket booked an hour ahead in the version 2 file admitted at once")
	iv, err := s.Learn(ctx, "k", lim, driver.Feedback{Interval: 250 * time.Millisecond, TTL: time.Hour})
	require.NoError(t, err)
	assert.Equal(t, 250*time.Millisecond, iv, "Learn after the upgrade")

	saved := migrations
	t.Cleanup(func() { migrations = saved })
	migrations = migrations[:3]
	_, err = Open(path, Options{SweepInterval: -1})
	assert.ErrorIs(t, err, ErrNewerSchema, "Open by a program of version 2")
}
