package sqlitestore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

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
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
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
			if err := s.Sweep(t.Context()); err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			has, err := s.Has(t.Context(), key)
			if err != nil {
				t.Fatalf("Has: %v", err)
			}
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
		if _, err := s.Admit(ctx, driver.Request{Key: fmt.Sprint("idle-", i), Limit: backendtest.Limit(short), Cost: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Len(ctx); err != nil || n != 100 {
		t.Fatalf("Len = %d, %v, want 100", n, err)
	}
	clock.Add(time.Second)
	busy := bucket.PerSecond(1_000_000).WithBurst(1_000_000)
	for i := range 100 {
		if _, err := s.Admit(ctx, driver.Request{Key: fmt.Sprint("busy-", i), Limit: backendtest.Limit(busy), Cost: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// 100 rows written examine 200 rows: every idle row has been seen.
	n, err := s.Len(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 100 {
		t.Errorf("after 100 rows written, %d rows remain, want the 100 busy ones (the 100 idle ones deleted)", n)
	}
	for i := range 100 {
		if has, err := s.Has(ctx, fmt.Sprint("busy-", i)); err != nil || !has {
			t.Fatalf("busy key %d: Has = %v, %v, want its row kept", i, has, err)
		}
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
	if d, err := s.Admit(ctx, r); err != nil || !d.Allowed {
		t.Fatalf("Admit = %v, %v", d.Allowed, err)
	}
	db, err := rawDB(t, path).Conn(ctx) // data_version counts other connections' commits
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	row := func() (seen int64, changes int64) {
		t.Helper()
		if err := db.QueryRowContext(ctx, "SELECT seen FROM buckets WHERE key = CAST('k' AS BLOB)").Scan(&seen); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(ctx, "PRAGMA data_version").Scan(&changes); err != nil {
			t.Fatal(err)
		}
		return seen, changes
	}
	seen, version := row()
	clock.Add(time.Minute)
	for range 10 {
		if d, err := s.Admit(ctx, r); err != nil || d.Allowed {
			t.Fatalf("Admit within the hour = %v, %v, want refused", d.Allowed, err)
		}
	}
	if seen2, version2 := row(); seen2 != seen || version2 != version {
		t.Errorf("refusals changed the file: seen %d → %d, data_version %d → %d", seen, seen2, version, version2)
	}
}
