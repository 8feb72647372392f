package pgstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// BenchmarkLeases compares capped admissions with uncapped ones, on one
// key and on 1,000, under a rate that never binds: 16 callers of Admit
// sharing round trips, and one caller of AdmitBatch with batches of 128,
// as a Dispatcher sends them. A capped admission takes a lease (a cap of
// 10,000 that never binds), and its caller releases it at once: Admit's
// callers one lease per Release, AdmitBatch's caller the batch's leases
// in one Release, so a capped admission costs its share of a second
// round trip. admissions/s counts admissions only.
//
//	go test -run '^$' -bench BenchmarkLeases ./backend/pgstore/
func BenchmarkLeases(b *testing.B) {
	fast := bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000)
	for _, capped := range []bool{false, true} {
		lim := fast
		name := "uncapped"
		if capped {
			lim, name = fast.WithInflight(driver.MaxInflight), "capped"
		}
		for _, keys := range []int{1, 1000} {
			b.Run(fmt.Sprintf("Admit/%s/keys=%d", name, keys), func(b *testing.B) {
				benchAdmit(b, backendtest.Limit(lim), keys, nil)
			})
			b.Run(fmt.Sprintf("AdmitBatch/%s/keys=%d", name, keys), func(b *testing.B) {
				benchAdmitBatch(b, backendtest.Limit(lim), keys, nil)
			})
		}
	}
}

// benchStore returns a Store whose schema is installed, and on which
// setup, if set, has run, and resets b's timer: the install took up to a
// second on a loaded host, which a run of few iterations counted.
func benchStore(b *testing.B, setup func(*pgstore.Store)) *pgstore.Store {
	s := newStore(b, newPool(b), pgstore.Options{})
	if _, err := s.Admit(context.Background(), driver.Request{Key: "warm-up", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}); err != nil {
		b.Fatal(err)
	}
	if setup != nil {
		setup(s)
	}
	b.ResetTimer()
	return s
}

// benchAdmit and benchAdmitBatch time admissions of keys "k0", "k1" and
// so on, on a Store from benchStore.
func benchAdmit(b *testing.B, lim driver.Limit, keys int, setup func(*pgstore.Store)) {
	s := benchStore(b, setup)
	ctx := context.Background()
	ids := driver.NewLeaseIDs()
	var n, admitted atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			req := driver.Request{Key: fmt.Sprint("k", i%int64(keys)), Limit: lim, Cost: 1}
			if lim.Inflight > 0 {
				req.Lease = ids.Next()
			}
			d, err := s.Admit(ctx, req)
			if err != nil {
				b.Error(err)
				return
			}
			if !d.Allowed {
				continue
			}
			admitted.Add(1)
			if lim.Inflight > 0 {
				if err := s.Release(ctx, []driver.LeaseRef{{Key: req.Key, ID: req.Lease}}); err != nil {
					b.Error(err)
					return
				}
			}
		}
	})
	b.ReportMetric(float64(admitted.Load())/b.Elapsed().Seconds(), "admissions/s")
}

func benchAdmitBatch(b *testing.B, lim driver.Limit, keys int, setup func(*pgstore.Store)) {
	s := benchStore(b, setup)
	ctx := context.Background()
	ids := driver.NewLeaseIDs()
	batch := make([]driver.Admission, 128)
	var release []driver.LeaseRef
	admitted, n := 0, 0
	b.ReportAllocs()
	for b.Loop() {
		release = release[:0]
		for i := range batch {
			n++
			batch[i] = driver.Admission{Request: driver.Request{Key: fmt.Sprint("k", n%keys), Limit: lim, Cost: 1}}
			if lim.Inflight > 0 {
				batch[i].Lease = ids.Next()
			}
		}
		s.AdmitBatch(ctx, batch)
		for _, a := range batch {
			if a.Err != nil {
				b.Fatal(a.Err)
			}
			if a.Decision.Allowed {
				admitted++
				if lim.Inflight > 0 {
					release = append(release, driver.LeaseRef{Key: a.Key, ID: a.Lease})
				}
			}
		}
		if len(release) > 0 {
			if err := s.Release(ctx, release); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(admitted)/b.Elapsed().Seconds(), "admissions/s")
}
