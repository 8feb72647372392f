package memstore_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
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
		var seq atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			// Goroutines walk the keys from different places, as
			// independent callers would, rather than in lockstep.
			i := int(seq.Add(1)) * 397
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

func BenchmarkAdmit(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	req := driver.Request{Key: "tenant-1", Limit: backendtest.Limit(open), Cost: 1}
	b.ReportAllocs()
	for b.Loop() {
		if d, err := s.Admit(ctx, req); !d.Allowed || err != nil {
			b.Fatalf("Admit = %v, %v", d.Allowed, err)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	var st driver.State
	req := driver.Request{Key: "tenant-1", Limit: backendtest.Limit(open), Cost: 1}
	b.ReportAllocs()
	now := int64(0)
	for b.Loop() {
		now += 10
		if d, err := driver.Decide(&st, &req, 1, now); !d.Allowed || err != nil {
			b.Fatalf("Decide = %v, %v", d.Allowed, err)
		}
	}
}

// BenchmarkAdmitBatch decides admissions of one key 64 at a time, as the
// Dispatcher does: the clock is read once per batch. ns/op is per
// admission.
func BenchmarkAdmitBatch(b *testing.B) {
	ctx := context.Background()
	s := newStore(b)
	batch := make([]driver.Admission, 64)
	lim := backendtest.Limit(open)
	b.ReportAllocs()
	for n := 0; n < b.N; n += len(batch) {
		for i := range batch {
			batch[i] = driver.Admission{Request: driver.Request{Key: "tenant-1", Limit: lim, Cost: 1}}
		}
		s.AdmitBatch(ctx, batch)
		if d := batch[len(batch)-1]; !d.Decision.Allowed || d.Err != nil {
			b.Fatalf("AdmitBatch: %+v", d)
		}
	}
}
