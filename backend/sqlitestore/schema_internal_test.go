package sqlitestore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// TestSchemaVersionIsLatest: the exported version is where the migrations
// lead.
func TestSchemaVersionIsLatest(t *testing.T) {
	if latestVersion() != SchemaVersion {
		t.Errorf("migrations lead to version %d, SchemaVersion is %d", latestVersion(), SchemaVersion)
	}
}

// TestConnectionSettings: the store's connection runs with the settings
// its documentation promises.
func TestConnectionSettings(t *testing.T) {
	for _, full := range []bool{false, true} {
		s, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{FullSync: full, SweepInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var mode string
		var sync, checkpoint int
		if err := s.conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := s.conn.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if err := s.conn.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&checkpoint); err != nil {
			t.Fatal(err)
		}
		want := 1 // NORMAL
		if full {
			want = 2 // FULL
		}
		if mode != "wal" || sync != want || checkpoint != 0 {
			t.Errorf("FullSync %v: journal_mode %s, synchronous %d, wal_autocheckpoint %d; want wal, %d, 0", full, mode, sync, checkpoint, want)
		}
		if n := s.db.Stats().MaxOpenConnections; n != 1 {
			t.Errorf("pool of %d connections, want 1 (SQLite has one writer)", n)
		}
		s.Close()
	}
}

// TestMigrateUpgrade: a file of the previous schema version is brought up
// to date when opened, and keeps its buckets.
func TestMigrateUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s, err := Open(path, Options{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1, MaxWait: time.Hour}
	first, err := s.Admit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	saved := migrations
	t.Cleanup(func() { migrations = saved })
	migrations = append(migrations[:len(migrations):len(migrations)], []string{`CREATE TABLE notes (id INTEGER PRIMARY KEY)`})

	s, err = Open(path, Options{SweepInterval: -1})
	if err != nil {
		t.Fatalf("Open of a version %d file: %v", SchemaVersion, err)
	}
	defer s.Close()
	var version, notes int
	if err := s.conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if err := s.conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE name = 'notes'").Scan(&notes); err != nil {
		t.Fatal(err)
	}
	if version != SchemaVersion+1 || notes != 1 {
		t.Errorf("after the upgrade: user_version %d, notes table %d; want %d, 1", version, notes, SchemaVersion+1)
	}
	next, err := s.Admit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if next.Start() < first.Start()+int64(time.Second) {
		t.Errorf("after the upgrade the bucket restarted: next start first+%v, want first+1s", time.Duration(next.Start()-first.Start()))
	}
}
