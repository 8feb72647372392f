package sqlitestore_test

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A limit that never binds, so that every admission is charged and written.
var unbounded = bucket.PerSecond(1_000_000).WithBurst(1_000_000_000)

// reportRate reports the admissions per second of a benchmark that made n.
func reportRate(b *testing.B, n int) {
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "admissions/s")
}

func BenchmarkAdmit(b *testing.B) {
	ctx := context.Background()
	for _, lim := range []struct {
		name string
		lim  bucket.Limit
	}{
		{"rate", unbounded},
		{"quota", unbounded.WithQuota(1_000_000_000, 1e9*1e3*3600)},
	} {
		b.Run(lim.name+"/goroutines=1", func(b *testing.B) {
			s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
			req := driver.Request{Key: "tenant-1", Limit: backendtest.Limit(lim.lim), Cost: 1}
			b.ReportAllocs()
			for b.Loop() {
				if d, err := s.Admit(ctx, req); !d.Allowed || err != nil {
					b.Fatalf("Admit = %v, %v", d.Allowed, err)
				}
			}
			reportRate(b, b.N)
		})
	}
	b.Run("goroutines=parallel", func(b *testing.B) {
		s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			req := driver.Request{Key: "tenant-1", Limit: backendtest.Limit(unbounded), Cost: 1}
			for pb.Next() {
				if d, err := s.Admit(ctx, req); !d.Allowed || err != nil {
					b.Errorf("Admit = %v, %v", d.Allowed, err)
					return
				}
			}
		})
		reportRate(b, b.N)
	})
	b.Run("keys=1000", func(b *testing.B) {
		s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
		keys := make([]string, 1000)
		for i := range keys {
			keys[i] = "tenant-" + strconv.Itoa(i)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			req := driver.Request{Key: keys[i%len(keys)], Limit: backendtest.Limit(unbounded), Cost: 1}
			if d, err := s.Admit(ctx, req); !d.Allowed || err != nil {
				b.Fatalf("Admit = %v, %v", d.Allowed, err)
			}
			i += 7
		}
		reportRate(b, b.N)
	})
}

func BenchmarkAdmitBatch(b *testing.B) {
	ctx := context.Background()
	for _, keys := range []int{1, 64} {
		b.Run("size=64/keys="+strconv.Itoa(keys), func(b *testing.B) {
			s := open(b, filepath.Join(b.TempDir(), "b.db"), sqlitestore.Options{})
			batch := make([]driver.Admission, 64)
			b.ReportAllocs()
			for b.Loop() {
				for i := range batch {
					batch[i].Request = driver.Request{Key: "tenant-" + strconv.Itoa(i%keys), Limit: backendtest.Limit(unbounded), Cost: 1}
				}
				s.AdmitBatch(ctx, batch)
				for i := range batch {
					if a := &batch[i]; !a.Decision.Allowed || a.Err != nil {
						b.Fatalf("batch[%d] = %v, %v", i, a.Decision.Allowed, a.Err)
					}
				}
			}
			reportRate(b, b.N*len(batch))
		})
	}
}
