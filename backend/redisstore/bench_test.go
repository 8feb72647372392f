package redisstore_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/latency"
)

// benchLimit admits everything and writes state at every admission, as a
// limit that does not bind does: 10^9 per second, a burst of 10^9.
var benchLimit = bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000)

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint("tenant-", i)
	}
	return keys
}

// BenchmarkAdmit measures Store.Admit with 1 and 16 concurrent callers on
// 1 and 1,000 keys, coalesced into pipelines (the default) or one round
// trip per call (Pipelines: -1). It reports admissions/s and the p50 and
// p99 latency of one call.
func BenchmarkAdmit(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts redisstore.Options
	}{
		{"coalesced", redisstore.Options{}},
		{"direct", redisstore.Options{Pipelines: -1}},
	} {
		for _, callers := range []int{1, 16} {
			for _, nkeys := range []int{1, 1000} {
				b.Run(fmt.Sprintf("%s/callers=%d/keys=%d", mode.name, callers, nkeys), func(b *testing.B) {
					s := newStore(b, newClient(b), mode.opts)
					benchAdmit(b, s, callers, benchKeys(nkeys), uncapped)
				})
			}
		}
	}
}

// What the admissions of benchAdmit ask for.
type capMode int

const (
	uncapped       capMode = iota // benchLimit
	capped                        // benchLimit with an inflight cap, each admission a lease of its own
	cappedReleased                // the same, each lease released after its admission: two round trips
)

func (m capMode) String() string { return [...]string{"uncapped", "capped", "capped+release"}[m] }

// benchCap is the inflight cap of capped admissions: the most a key may
// hold, so that it never binds.
const benchCap = driver.MaxInflight

func benchAdmit(b *testing.B, s *redisstore.Store, callers int, keys []string, mode capMode) {
	ctx := context.Background()
	var (
		mu  sync.Mutex
		all latency.Histogram
		ids = driver.NewLeaseIDs()
	)
	lim := benchLimit
	if mode != uncapped {
		lim = lim.WithInflight(benchCap)
	}
	work := func(next func() bool, i int) {
		var h latency.Histogram
		req := driver.Request{Limit: backendtest.Limit(lim), Cost: 1}
		if mode == capped {
			// Leases no one releases: the shortest time to live keeps
			// a key's set at what 10ms of admissions took.
			req.LeaseTTL = driver.MinLeaseTTL
		}
		for next() {
			req.Key = keys[i%len(keys)]
			i++
			if mode != uncapped {
				req.Lease = ids.Next()
			}
			t0 := time.Now()
			d, err := s.Admit(ctx, req)
			h.Add(time.Since(t0))
			if err != nil || !d.Allowed {
				b.Fatalf("Admit = %+v, %v", d, err)
			}
			if mode == cappedReleased {
				if err := s.Release(ctx, []driver.LeaseRef{{Key: req.Key, ID: req.Lease}}); err != nil {
					b.Fatalf("Release: %v", err)
				}
			}
		}
		mu.Lock()
		all.Merge(&h)
		mu.Unlock()
	}
	elapsed, cpu := runCallers(b, callers, work)
	report(b, b.N, elapsed, cpu, &all)
}

// runCallers runs work from callers concurrent callers, each from a place
// of its own in the keys (i), until b has its count, and returns how long
// they took and the CPU time the process spent meanwhile (0 where it
// cannot be read).
func runCallers(b *testing.B, callers int, work func(next func() bool, i int)) (elapsed, cpu time.Duration) {
	b.ReportAllocs()
	start, cpu0 := time.Now(), cpuTime()
	if callers == 1 {
		work(b.Loop, 0)
	} else {
		b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		var seed sync.Mutex
		n := 0
		b.RunParallel(func(pb *testing.PB) {
			seed.Lock()
			i := n * 7919
			n++
			seed.Unlock()
			work(pb.Next, i)
		})
	}
	return time.Since(start), cpuTime() - cpu0
}

// BenchmarkAdmitCapped measures Store.Admit of requests under an
// inflight cap that does not bind, each taking a lease of its own, beside
// the same requests uncapped, with 1 and 16 concurrent callers on 1 and
// 1,000 keys: what the lease costs an admission (capped), and an
// admission with its release (capped+release, which adds a round trip).
func BenchmarkAdmitCapped(b *testing.B) {
	for _, mode := range []capMode{uncapped, capped, cappedReleased} {
		for _, callers := range []int{1, 16} {
			for _, nkeys := range []int{1, 1000} {
				b.Run(fmt.Sprintf("%v/callers=%d/keys=%d", mode, callers, nkeys), func(b *testing.B) {
					s := newStore(b, newClient(b), redisstore.Options{})
					benchAdmit(b, s, callers, benchKeys(nkeys), mode)
				})
			}
		}
	}
}

// BenchmarkAdmitBatch measures AdmitBatch of 64 admissions over 1,000
// keys, from 1 and 4 concurrent callers: the dispatcher's way of sending
// many pending admissions at once.
func BenchmarkAdmitBatch(b *testing.B) {
	for _, callers := range []int{1, 4} {
		b.Run(fmt.Sprintf("batch=64/callers=%d/keys=1000", callers), func(b *testing.B) {
			benchBatch(b, newStore(b, newClient(b), redisstore.Options{}), callers, benchKeys(1000))
		})
	}
}

// benchBatch measures AdmitBatch of 64 admissions over keys from callers
// concurrent callers.
func benchBatch(b *testing.B, s *redisstore.Store, callers int, keys []string) {
	ctx := context.Background()
	var (
		mu  sync.Mutex
		all latency.Histogram
	)
	work := func(next func() bool, i int) {
		var h latency.Histogram
		batch := make([]driver.Admission, 64)
		for next() {
			for j := range batch {
				batch[j] = driver.Admission{Request: driver.Request{Key: keys[i%len(keys)], Limit: backendtest.Limit(benchLimit), Cost: 1}}
				i++
			}
			t0 := time.Now()
			s.AdmitBatch(ctx, batch)
			h.Add(time.Since(t0))
			for _, a := range batch {
				if a.Err != nil || !a.Decision.Allowed {
					b.Fatalf("AdmitBatch: %+v, %v", a.Decision, a.Err)
				}
			}
		}
		mu.Lock()
		all.Merge(&h)
		mu.Unlock()
	}
	elapsed, cpu := runCallers(b, callers, work)
	report(b, b.N*64, elapsed, cpu, &all)
	b.ReportMetric(float64(all.Quantile(0.5).Microseconds()), "batch-p50-µs")
}

// report reports admissions/s, the p50 and p99 latency of a call, and
// the CPU time the client's process spent per admission: the figure a
// change of the client's code moves, which a loaded machine moves less
// than the others.
func report(b *testing.B, admissions int, elapsed, cpu time.Duration, h *latency.Histogram) {
	b.ReportMetric(float64(admissions)/elapsed.Seconds(), "admissions/s")
	b.ReportMetric(float64(h.Quantile(0.5))/1e3, "p50-µs")
	b.ReportMetric(float64(h.Quantile(0.99))/1e3, "p99-µs")
	if cpu > 0 {
		b.ReportMetric(float64(cpu)/1e3/float64(admissions), "cpu-µs/adm")
	}
}
