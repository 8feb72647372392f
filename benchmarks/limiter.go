package main

import (
	"context"
	"sync"
	"time"

	"go.uber.org/ratelimit"
	"golang.org/x/time/rate"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
)

// open is a limit that never binds, so that every admission takes the full
// path (read the clock, decide, charge): 10^9 per second, burst 10^9.
var open = bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000)

const microTime = 150 * time.Millisecond

func newMemLimiter(lim bucket.Limit) (*bucket.Limiter, *memstore.Store) {
	s, err := memstore.New(memstore.Options{})
	if err != nil {
		panic(err)
	}
	l, err := bucket.NewLimiter(s, lim)
	if err != nil {
		panic(err)
	}
	return l, s
}

var (
	nsPerOp = metricSpec{key: "ns/op", label: "time per admission", unit: "ns/op", better: "lower"}
	allocs  = metricSpec{key: "allocs/op", label: "allocations per admission", unit: "allocs/op", better: "lower"}
)

// limiterAllow compares one admission on one key in memory: our
// Limiter.Allow on memstore, x/time/rate's Allow and uber ratelimit's Take,
// from g goroutines sharing the limiter.
func limiterAllow(g int) func(r *reporter) {
	return func(r *reporter) {
		ctx := context.Background()
		ours, store := newMemLimiter(open)
		defer store.Close()
		xr := rate.NewLimiter(rate.Limit(1e9), 1e9)
		ub := ratelimit.New(1e9)

		res := repeat(r.reps,
			micro("leakybucket", g, microTime, func(_, n int) {
				for range n {
					if ok, err := ours.Allow(ctx, "tenant-1"); !ok || err != nil {
						panic("refused")
					}
				}
			}),
			micro("x/time/rate Allow", g, microTime, func(_, n int) {
				for range n {
					if !xr.Allow() {
						panic("refused")
					}
				}
			}),
			micro("uber ratelimit Take", g, microTime, func(_, n int) {
				for range n {
					ub.Take()
				}
			}),
		)
		tgt := nsPerOp
		tgt.label = "Limiter.Allow, one key"
		if g == 1 {
			tgt.target = atMost(60, "≤ 60 ns")
		}
		r.compare(tgt, "leakybucket memstore", res["leakybucket"], "x/time/rate Allow", res["x/time/rate Allow"])
		tgt.target = nil
		r.compare(tgt, "leakybucket memstore", res["leakybucket"], "uber ratelimit Take", res["uber ratelimit Take"])
		r.compare(allocs, "leakybucket memstore", res["leakybucket"], "x/time/rate Allow", res["x/time/rate Allow"])
	}
}

// mapLimiter is the pattern users write for per-key limits with
// x/time/rate: a map of limiters behind a mutex, created on first use.
type mapLimiter struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
	r  rate.Limit
	b  int
}

func newMapLimiter(r rate.Limit, b int) *mapLimiter {
	return &mapLimiter{m: make(map[string]*rate.Limiter), r: r, b: b}
}

func (m *mapLimiter) get(key string) *rate.Limiter {
	m.mu.Lock()
	l := m.m[key]
	if l == nil {
		l = rate.NewLimiter(m.r, m.b)
		m.m[key] = l
	}
	m.mu.Unlock()
	return l
}

// syncMapLimiter is the same with a sync.Map.
type syncMapLimiter struct {
	m sync.Map
	r rate.Limit
	b int
}

func (m *syncMapLimiter) get(key string) *rate.Limiter {
	if l, ok := m.m.Load(key); ok {
		return l.(*rate.Limiter)
	}
	l, _ := m.m.LoadOrStore(key, rate.NewLimiter(m.r, m.b))
	return l.(*rate.Limiter)
}

// limiterKeys compares admissions spread over 1,000 keys: ours against a
// map of rate.Limiter behind a mutex and in a sync.Map.
func limiterKeys(g int) func(r *reporter) {
	return func(r *reporter) {
		ctx := context.Background()
		ks := keys(1000)
		ours, store := newMemLimiter(open)
		defer store.Close()
		mm := newMapLimiter(rate.Limit(1e9), 1e9)
		sm := &syncMapLimiter{r: rate.Limit(1e9), b: 1e9}
		// Goroutines walk the keys from different places, as independent
		// callers would.
		walk := func(w, n int, allow func(string) bool) {
			i := w * 397
			for range n {
				if !allow(ks[i%len(ks)]) {
					panic("refused")
				}
				i += 7
			}
		}
		res := repeat(r.reps,
			micro("ours", g, microTime, func(w, n int) {
				walk(w, n, func(k string) bool { ok, _ := ours.Allow(ctx, k); return ok })
			}),
			micro("mutex", g, microTime, func(w, n int) {
				walk(w, n, func(k string) bool { return mm.get(k).Allow() })
			}),
			micro("syncmap", g, microTime, func(w, n int) {
				walk(w, n, func(k string) bool { return sm.get(k).Allow() })
			}),
		)
		m := nsPerOp
		m.label = "Limiter.Allow, 1,000 keys"
		r.compare(m, "leakybucket memstore", res["ours"], "map[string]*rate.Limiter + Mutex", res["mutex"])
		r.compare(m, "leakybucket memstore", res["ours"], "sync.Map of *rate.Limiter", res["syncmap"])
	}
}
