package main

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/alitto/pond/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// tenantLimit is the limit of the scale comparisons: 100/s per key, which
// one job per key never reaches.
var tenantLimit = bucket.PerSecond(100)

// scaleKeys returns n keys of one length, so that every key costs the same
// in every store.
func scaleKeys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("tenant-%08d", i)
	}
	return ks
}

// heapAlloc collects garbage and returns the bytes of live heap objects.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// scaleRun runs one job for each of the n keys through run, which returns
// once every job has finished and hands back what it keeps (the
// dispatcher, the map of limiters) and how to let go of it. It reports
// jobs/s and the heap kept per key after the jobs, above the heap before,
// with what run keeps still alive.
func scaleRun(ks []string, run func(ks []string) (release func())) sample {
	resultsFor(len(ks))
	base := heapAlloc()
	t0 := time.Now()
	release := run(ks)
	el := time.Since(t0)
	kept := float64(heapAlloc()) - float64(base)
	release()
	return sample{
		"jobs/s": float64(len(ks)) / el.Seconds(),
		"B/key":  kept / float64(len(ks)),
	}
}

// scaleOurs runs the jobs through a Dispatcher with 8 workers and a
// memstore limiter, and keeps both until release. The time ends when the
// last handler returns; release shuts the Dispatcher down.
func scaleOurs(ks []string) func() {
	n := len(ks)
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		panic(err)
	}
	lim, err := bucket.NewLimiter(store, tenantLimit)
	if err != nil {
		panic(err)
	}
	res := results
	var left atomic.Int64
	left.Store(int64(n))
	all := make(chan struct{})
	h := func(_ context.Context, i int) (int, error) {
		res[i] = i
		if left.Add(-1) == 0 {
			close(all)
		}
		return i, nil
	}
	d, err := dispatcher.New(h, func(i int) string { return ks[i] },
		dispatcher.WithWorkers(poolWorkers), dispatcher.WithLimiter(lim))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for i := range n {
		if _, err := d.Submit(ctx, i); err != nil {
			panic(err)
		}
	}
	select {
	case <-all:
	case <-time.After(maxRun):
		panic(fmt.Sprintf("Dispatcher: %d of %d jobs left after %v", left.Load(), n, maxRun))
	}
	return func() {
		drain(d)
		store.Close()
	}
}

// scaleErrgroup runs the jobs on errgroup.SetLimit(8), each waiting on its
// key's rate.Limiter from a map behind a mutex, and keeps the map.
func scaleErrgroup(ks []string) func() {
	ml := newMapLimiter(rate.Limit(tenantLimit.Rate), int(tenantLimit.Burst))
	g := mapGlue(ml)
	res := results
	var eg errgroup.Group
	eg.SetLimit(poolWorkers)
	for i := range ks {
		eg.Go(func() error {
			g(ks[i])
			res[i] = i
			return nil
		})
	}
	eg.Wait()
	return func() { runtime.KeepAlive(ml) }
}

// scalePond is scaleErrgroup on a pond ResultPool of 8 workers.
func scalePond(ks []string) func() {
	ml := newMapLimiter(rate.Limit(tenantLimit.Rate), int(tenantLimit.Burst))
	g := mapGlue(ml)
	res := results
	p := pond.NewResultPool[int](poolWorkers)
	for i := range ks {
		p.SubmitErr(func() (int, error) {
			g(ks[i])
			res[i] = i
			return i, nil
		})
	}
	p.StopAndWait()
	return func() { runtime.KeepAlive(ml) }
}

// warmSmall returns a contender that runs f on ks, but on at most 10,000
// of them the first time: the warm-up run of repeat, which at a million
// keys would otherwise cost as much as a repetition.
func warmSmall(name string, ks []string, f func(ks []string) sample) contender {
	warm := false
	return contender{name: name, run: func() sample {
		if !warm {
			warm = true
			return f(ks[:min(len(ks), 10_000)])
		}
		return f(ks)
	}}
}

// scale compares n distinct keys, one job each (issue 15): a Dispatcher
// with a memstore limiter against errgroup and pond waiting in their task
// on a map of rate.Limiter, the pattern a Dispatcher replaces. Both sides
// keep what they learnt of every key: the heap is measured after the jobs
// with the Dispatcher still running (its sweep has not come round) and the
// map still referenced.
func scale(n int) func(r *reporter) {
	return func(r *reporter) {
		ks := scaleKeys(n)
		res := repeat(r.reps,
			warmSmall("ours", ks, func(ks []string) sample { return scaleRun(ks, scaleOurs) }),
			warmSmall("errgroup", ks, func(ks []string) sample { return scaleRun(ks, scaleErrgroup) }),
			warmSmall("pond", ks, func(ks []string) sample { return scaleRun(ks, scalePond) }),
		)
		const ours = "Dispatcher + memstore"
		anchors := []struct{ key, name string }{
			{"errgroup", "errgroup SetLimit + map of rate.Limiter"},
			{"pond", "pond/v2 ResultPool + map of rate.Limiter"},
		}
		note := fmt.Sprintf("%d keys, one job each, 8 workers, 100/s per key", n)
		for _, a := range anchors {
			tp := metricSpec{key: "jobs/s", label: "throughput", unit: "jobs/s", better: "higher", note: note}
			if n == 1_000_000 && a.key == "errgroup" {
				tp.target = &target{"≥ 1.2× errgroup + map", nil}
				r.compareTarget(tp, ours, res["ours"], a.name, res[a.key], 1.2)
				continue
			}
			r.compare(tp, ours, res["ours"], a.name, res[a.key])
		}
		for _, a := range anchors {
			m := metricSpec{key: "B/key", label: "heap kept per key after the jobs", unit: "bytes", better: "lower",
				note: note + "; live heap after GC above the start, per key"}
			if n == 1_000_000 && a.key == "errgroup" {
				m.target = atMost(200, "≤ 200 B")
			}
			r.compare(m, ours, res["ours"], a.name, res[a.key])
		}
	}
}

// statsCost measures Stats() and KeyStats on a Dispatcher that keeps the
// figures of n keys (WithKeyStats, after one job for each), and Stats()
// on one that has seen a single key: the cost must not grow with the keys
// (issue 15). It returns ns and allocations per call of each.
func statsCost(n int) sample {
	ks := scaleKeys(n)
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		panic(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, tenantLimit)
	if err != nil {
		panic(err)
	}
	d, err := dispatcher.New(func(_ context.Context, i int) (int, error) { return i, nil },
		func(i int) string { return ks[i] },
		dispatcher.WithWorkers(poolWorkers), dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(n))
	if err != nil {
		panic(err)
	}
	defer drain(d)
	ctx := context.Background()
	var last *dispatcher.Future[int]
	for i := range n {
		if last, err = d.Submit(ctx, i); err != nil {
			panic(err)
		}
	}
	last.Wait(ctx)
	for d.Stats().Succeeded < int64(n) {
		time.Sleep(time.Millisecond)
	}
	const calls = 2000
	per := func(f func(i int)) (ns, allocs float64) {
		runtime.GC()
		m0 := mallocs()
		t0 := time.Now()
		for i := range calls {
			f(i)
		}
		el := time.Since(t0)
		return float64(el.Nanoseconds()) / calls, float64(mallocs()-m0) / calls
	}
	var sink int64
	statsNs, statsAllocs := per(func(int) { sink += d.Stats().Waiting })
	keyNs, _ := per(func(i int) {
		k, _ := d.KeyStats(ks[(i*7919)%n])
		sink += k.Submitted
	})
	runtime.KeepAlive(sink)
	return sample{"stats-ns": statsNs, "stats-allocs": statsAllocs, "keystats-ns": keyNs}
}

// statsScale compares Stats() with a million keys' figures kept against
// Stats() with one key's.
func statsScale(r *reporter) {
	const n = 1_000_000
	warm := false
	res := repeat(r.reps,
		contender{"many", func() sample {
			if !warm {
				warm = true
				return statsCost(10_000)
			}
			return statsCost(n)
		}},
		contender{"one", func() sample { return statsCost(1) }},
	)
	note := "Dispatcher WithKeyStats after one job for each key, memstore, 8 workers; mean of 2,000 calls"
	r.compare(metricSpec{key: "stats-ns", label: "Stats() with 10⁶ keys known", unit: "ns/call", better: "lower",
		target: atMost(10_000, "< 10 µs"), note: note},
		"Dispatcher.Stats, 10⁶ keys", res["many"], "Dispatcher.Stats, 1 key", res["one"])
	r.compare(metricSpec{key: "stats-allocs", label: "Stats() allocations", unit: "allocs/call", better: "lower",
		target: atMost(res["one"][0]["stats-allocs"], "as many as with 1 key"), note: note},
		"Dispatcher.Stats, 10⁶ keys", res["many"], "Dispatcher.Stats, 1 key", res["one"])
	r.compare(metricSpec{key: "keystats-ns", label: "KeyStats(key) with 10⁶ keys known", unit: "ns/call", better: "lower", note: note},
		"Dispatcher.KeyStats, 10⁶ keys", res["many"], "Dispatcher.KeyStats, 1 key", res["one"])
}
