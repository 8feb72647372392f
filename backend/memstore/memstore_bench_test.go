package memstore_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
)

// A limit that never binds, so every admission takes the full path.
var open = bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000)

func newStore(b *testing.B) *memstore.Store {
	b.Helper()
	s, err := memstore.New(memstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func BenchmarkAllow(b *testing.B) {
	ctx := context.Background()
	b.Run("keys=1", func(b *testing.B) {
		l, err := bucket.NewLimiter(newStore(b), open)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if ok, err := l.Allow(ctx, "tenant-1"); !ok || err != nil {
				b.Fatalf("Allow = %v, %v", ok, err)
			}
		}
	})
	b.Run("keys=1000", func(b *testing.B) {
		l, err := bucket.NewLimiter(newStore(b), open)
		if err != nil {
			b.Fatal(err)
		}
		keys := make([]string, 1000)
		for i := range keys {
			keys[i] = "tenant-" + strconv.Itoa(i)
		}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if ok, err := l.Allow(ctx, keys[i%len(keys)]); !ok || err != nil {
					b.Errorf("Allow = %v, %v", ok, err)
					return
				}
				i += 7
			}
		})
	})
}
