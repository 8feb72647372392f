package pgstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// BenchmarkLearned compares admissions of a learned limit with those of
// a fixed one, on 1,000 keys, under a rate that never binds, as
// BenchmarkLeases measures them: 16 callers of Admit, and one caller of
// AdmitBatch with batches of 128. "learned" keys have a floor and
// learned nothing; "record" keys learned an interval (2 µs, which never
// binds either) that every admission applies. Learn: 16 callers sending
// throttles. admissions/s counts admissions only.
//
//	go test -run '^$' -bench BenchmarkLearned ./backend/pgstore/
func BenchmarkLearned(b *testing.B) {
	const keys = 1000
	fast := bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000)
	learned := fast.WithFloor(1, time.Second)
	record := func(s *pgstore.Store) {
		for i := range keys {
			_, err := s.Learn(context.Background(), fmt.Sprint("k", i), backendtest.Limit(learned),
				driver.Feedback{Interval: 2 * time.Microsecond, TTL: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		lim   bucket.Limit
		setup func(*pgstore.Store)
	}{
		{"fixed", fast, nil},
		{"learned", learned, nil},
		{"record", learned, record},
	} {
		b.Run(fmt.Sprintf("Admit/%s/keys=%d", tc.name, keys), func(b *testing.B) {
			benchAdmit(b, backendtest.Limit(tc.lim), keys, tc.setup)
		})
		b.Run(fmt.Sprintf("AdmitBatch/%s/keys=%d", tc.name, keys), func(b *testing.B) {
			benchAdmitBatch(b, backendtest.Limit(tc.lim), keys, tc.setup)
		})
	}
	b.Run(fmt.Sprintf("Learn/keys=%d", keys), func(b *testing.B) {
		s := benchStore(b, nil)
		lim := backendtest.Limit(learned)
		var n atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				if _, err := s.Learn(context.Background(), fmt.Sprint("k", i%keys), lim, driver.Feedback{Throttled: true, Gen: i}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
