package sqlitestore_test

import (
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
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
		New: func(t *testing.T) bucket.Backend {
			return open(t, path, sqlitestore.Options{})
		},
		Peer: func(t *testing.T, b bucket.Backend) bucket.Backend {
			return open(t, b.(*sqlitestore.Store).Path(), sqlitestore.Options{})
		},
		Forgotten: func(t *testing.T, b bucket.Backend, key string) bool {
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
