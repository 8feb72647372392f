package sqlitestore_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// BenchmarkLearn measures what learning costs: an admission of a learned
// limit whose key learned nothing, one whose key holds a throttle's
// record (read, applied and written back with its row), and a Learn of a
// throttle, each alone on one key, one goroutine.
func BenchmarkLearn(b *testing.B) {
	ctx := context.Background()
	lim := backendtest.Limit(unbounded.WithFloor(1, time.Second))
	throttle := driver.Feedback{Throttled: true, TTL: time.Hour}
	admit := func(b *testing.B, s *sqlitestore.Store) {
		req := driver.Request{Key: "tenant-1", Limit: lim, Cost: 1}
		b.ReportAllocs()
		for b.Loop() {
			if d, err := s.Admit(ctx, req); !d.Allowed || err != nil {
				b.Fatalf("Admit = %v, %v", d.Allowed, err)
			}
		}
		reportRate(b, b.N)
	}
	b.Run("admit/record=none", func(b *testing.B) {
		admit(b, open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{}))
	})
	b.Run("admit/record=throttle", func(b *testing.B) {
		s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
		if _, err := s.Learn(ctx, "tenant-1", lim, throttle); err != nil {
			b.Fatal(err)
		}
		admit(b, s)
	})
	b.Run("learn", func(b *testing.B) {
		s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Learn(ctx, "tenant-1", lim, throttle); err != nil {
				b.Fatal(err)
			}
		}
	})
}
