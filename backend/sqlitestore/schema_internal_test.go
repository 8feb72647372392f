package sqlitestore

import (
	"context"
	"path/filepath"
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
