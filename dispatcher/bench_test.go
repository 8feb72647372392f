package dispatcher_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

func trivial(_ context.Context, n int) (int, error) { return n, nil }

// BenchmarkSubmit pushes jobs through 8 workers with a trivial handler and
// reports jobs/s, including the final drain (Shutdown).
func BenchmarkSubmit(b *testing.B) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "tenant-" + strconv.Itoa(i)
	}
	open := bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000)
	for _, bc := range []struct {
		name    string
		limiter bool
	}{
		{"limiter=none", false},
		{"limiter=memstore/keys=1000", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := []dispatcher.Option{dispatcher.WithWorkers(8), dispatcher.WithQueue(4096)}
			var key func(int) string
			if bc.limiter {
				store, err := memstore.New(memstore.Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer store.Close()
				lim, err := bucket.NewLimiter(store, open)
				if err != nil {
					b.Fatal(err)
				}
				opts = append(opts, dispatcher.WithLimiter(lim))
				key = func(n int) string { return keys[n%len(keys)] }
			}
			d, err := dispatcher.New(trivial, key, opts...)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := d.Submit(ctx, i); err != nil {
					b.Fatal(err)
				}
				i++
			}
			if err := d.Shutdown(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
		})
	}
}
