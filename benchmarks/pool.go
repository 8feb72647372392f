package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alitto/pond/v2"
	"github.com/panjf2000/ants/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

const (
	poolWorkers = 8
	poolTime    = 300 * time.Millisecond
)

// results is where every pool's trivial handler writes, so that no pool
// needs its futures kept to deliver results and each is measured on its
// own machinery. It is grown to the largest run.
var results []int

func resultsFor(n int) []int {
	if len(results) < n {
		results = make([]int, n)
	}
	return results[:n]
}

// poolRun measures one pass of n trivial jobs submitted from one goroutine
// and drained: jobs/s, heap allocations per job and the peak heap above
// the start, in MiB. run returns how many jobs completed: a dispatcher
// that drains too slowly is stopped (see drain), and only what completed
// counts.
func poolRun(n int, run func(n int) int) sample {
	resultsFor(n)
	peak := startPeak()
	m0 := mallocs()
	t0 := time.Now()
	done := run(n)
	el := time.Since(t0)
	m1 := mallocs()
	p := peak.Stop()
	return sample{
		"jobs/s":     float64(done) / el.Seconds(),
		"allocs/job": float64(m1-m0) / float64(max(done, 1)),
		"peak-MB":    p / (1 << 20),
	}
}

// drainTime bounds how long a Dispatcher may take to drain after the last
// Submit, and maxRun how long a fixed number of jobs may take, so that a
// Dispatcher that has slowed down cannot hold up the program: what it did
// not finish does not count.
const (
	drainTime = 2 * time.Second
	maxRun    = 10 * time.Second
)

// drain shuts d down, hard if it has not drained within drainTime, and
// returns how many jobs succeeded. If the hard stop itself does not
// return within another drainTime, drain stops waiting (Shutdown goes on
// in the background) and counts what succeeded so far.
func drain[T, R any](d *dispatcher.Dispatcher[T, R]) int {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), drainTime)
		defer cancel()
		d.Shutdown(ctx)
	}()
	select {
	case <-done:
	case <-time.After(2 * drainTime):
		abandoned.Add(1)
	}
	return int(d.Stats().Succeeded)
}

// abandoned counts the Dispatchers whose Shutdown did not return in time.
var abandoned atomic.Int64

// feed submits jobs first, first+step, ... from one goroutine and returns
// how many succeeded, so that a Dispatcher that has slowed down cannot
// hold up the program (what it did not finish does not count):
//
//   - n ≥ 0: n jobs with Submit's blocking backpressure, then drain. If
//     they are not all submitted within maxRun, feed gives up on d (the
//     blocked Submit is left behind: Shutdown cannot end it, see
//     docs/benchmarks.md) and counts what succeeded.
//   - n < 0: as many jobs as it can until the deadline, each submitted
//     with a context that ends at the deadline (jobs still queued then are
//     cancelled), then drain.
func feed[R any](d *dispatcher.Dispatcher[int, R], n int, deadline time.Time, first, step int) int {
	if n < 0 {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		for i := first; ; i += step {
			if _, err := d.Submit(ctx, i); err != nil {
				break
			}
		}
		return drain(d)
	}
	submitted := make(chan struct{})
	go func() {
		defer close(submitted)
		ctx := context.Background()
		for i, k := first, 0; k < n; i, k = i+step, k+1 {
			if _, err := d.Submit(ctx, i); err != nil {
				return
			}
		}
	}()
	select {
	case <-submitted:
		return drain(d)
	case <-time.After(time.Until(deadline)):
		abandoned.Add(1)
		return int(d.Stats().Succeeded)
	}
}

// The four pools, each running n jobs whose handler writes results[i],
// with limit (if not nil) called in the handler for the job's key.
func runOurs(n int, lim *bucket.Limiter, ks []string) int {
	res := results
	h := func(_ context.Context, i int) (int, error) { res[i] = i; return i, nil }
	opts := []dispatcher.Option{dispatcher.WithWorkers(poolWorkers)}
	var key func(int) string
	if lim != nil {
		opts = append(opts, dispatcher.WithLimiter(lim))
		key = func(i int) string { return ks[i%len(ks)] }
	}
	d, err := dispatcher.New(h, key, opts...)
	if err != nil {
		panic(err)
	}
	return feed(d, n, time.Now().Add(maxRun), 0, 1)
}

// glue is what a user writes to limit per key inside a pool's task: wait
// for the key's limiter from a map of rate.Limiter.
type glue func(key string)

func mapGlue(ml *mapLimiter) glue {
	ctx := context.Background()
	return func(k string) {
		if err := ml.get(k).Wait(ctx); err != nil {
			panic(err)
		}
	}
}

func runPond(n int, g glue, ks []string) int {
	res := results
	p := pond.NewResultPool[int](poolWorkers)
	for i := range n {
		p.SubmitErr(func() (int, error) {
			if g != nil {
				g(ks[i%len(ks)])
			}
			res[i] = i
			return i, nil
		})
	}
	p.StopAndWait()
	return n
}

func runAnts(n int, g glue, ks []string) int {
	res := results
	p, err := ants.NewPool(poolWorkers)
	if err != nil {
		panic(err)
	}
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		if err := p.Submit(func() {
			if g != nil {
				g(ks[i%len(ks)])
			}
			res[i] = i
			wg.Done()
		}); err != nil {
			panic(err)
		}
	}
	wg.Wait()
	p.Release()
	return n
}

func runErrgroup(n int, g glue, ks []string) int {
	res := results
	var eg errgroup.Group
	eg.SetLimit(poolWorkers)
	for i := range n {
		eg.Go(func() error {
			if g != nil {
				g(ks[i%len(ks)])
			}
			res[i] = i
			return nil
		})
	}
	eg.Wait()
	return n
}

// poolThroughput compares the Dispatcher with pond's ResultPool, ants and
// errgroup.SetLimit: 8 workers, a trivial handler, jobs submitted from one
// goroutine. With a limiter, ours admits each job through a memstore
// bucket of its key (1,000 keys, limits that never bind) and the anchors
// wait in their task on a map of rate.Limiter, the hand-made equivalent.
func poolThroughput(limited bool) func(r *reporter) {
	return func(r *reporter) {
		ks := keys(1000)
		var lim *bucket.Limiter
		var g glue
		if limited {
			l, store := newMemLimiter(open)
			defer store.Close()
			lim = l
			g = mapGlue(newMapLimiter(rate.Limit(1e9), 1e9))
		}
		res := repeat(r.reps,
			calibrated("ours", 20_000, poolTime, func(n int) sample { return poolRun(n, func(n int) int { return runOurs(n, lim, ks) }) }),
			calibrated("pond", 20_000, poolTime, func(n int) sample { return poolRun(n, func(n int) int { return runPond(n, g, ks) }) }),
			calibrated("ants", 20_000, poolTime, func(n int) sample { return poolRun(n, func(n int) int { return runAnts(n, g, ks) }) }),
			calibrated("errgroup", 20_000, poolTime, func(n int) sample { return poolRun(n, func(n int) int { return runErrgroup(n, g, ks) }) }),
		)
		suffix := ""
		if limited {
			suffix = " + map of rate.Limiter"
		}
		ours := "Dispatcher"
		if limited {
			ours = "Dispatcher + memstore"
		}
		tp := metricSpec{key: "jobs/s", label: "throughput", unit: "jobs/s", better: "higher"}
		// The targets: twice pond's throughput without a limiter, a
		// million jobs/s with one (issue 3), and 1.2× errgroup's with one
		// (issue 15).
		for _, a := range []struct{ key, name string }{{"pond", "pond/v2 ResultPool"}, {"ants", "ants/v2 Pool"}, {"errgroup", "errgroup SetLimit"}} {
			m := tp
			switch {
			case a.key == "errgroup" && limited:
				m.target = &target{"≥ 1.2× errgroup + map", nil}
				r.compareTarget(m, ours, res["ours"], a.name+suffix, res[a.key], 1.2)
			case a.key != "pond":
				r.compare(m, ours, res["ours"], a.name+suffix, res[a.key])
			case limited:
				m.target = atLeast(1e6, "≥ 1M jobs/s")
				r.compare(m, ours, res["ours"], a.name+suffix, res[a.key])
			default:
				m.target = &target{"≥ 2× pond", nil}
				r.compareTarget(m, ours, res["ours"], a.name+suffix, res[a.key], 2)
			}
		}
		al := metricSpec{key: "allocs/job", label: "allocations", unit: "allocs/job", better: "lower", target: atMost(2, "≤ 2")}
		for _, a := range []struct{ key, name string }{{"pond", "pond/v2 ResultPool"}, {"ants", "ants/v2 Pool"}, {"errgroup", "errgroup SetLimit"}} {
			r.compare(al, ours, res["ours"], a.name+suffix, res[a.key])
			al.target = nil
		}
		pk := metricSpec{key: "peak-MB", label: "peak heap", unit: "MiB", better: "lower",
			note: "heap objects and stacks above the start, sampled every 1ms"}
		for _, a := range []struct{ key, name string }{{"pond", "pond/v2 ResultPool"}, {"ants", "ants/v2 Pool"}, {"errgroup", "errgroup SetLimit"}} {
			r.compare(pk, ours, res["ours"], a.name+suffix, res[a.key])
		}
	}
}

// compareTarget is compare with a target relative to the anchor: ours
// must be at least factor times the anchor's median.
func (r *reporter) compareTarget(ms metricSpec, oursName string, ours []sample, anchorName string, anchor []sample, factor float64) {
	ms.target = atLeast(factor*summarize(anchor, ms.key).Median, ms.target.text)
	r.compare(ms, oursName, ours, anchorName, anchor)
}

// queuedMemory measures the memory one queued job holds: n jobs queued
// behind workers that are all blocked, after a collection. pond's queue
// is unbounded by default; ants and errgroup have no queue (Submit and Go
// block the caller), so they are not compared.
func queuedMemory(r *reporter) {
	const n = 100_000
	ks := keys(1000)
	lim, store := newMemLimiter(open)
	defer store.Close()
	ours := func(lim *bucket.Limiter) func(gate chan struct{}) func() {
		return func(gate chan struct{}) func() {
			h := func(_ context.Context, i int) (int, error) { <-gate; return i, nil }
			opts := []dispatcher.Option{dispatcher.WithWorkers(poolWorkers), dispatcher.WithQueue(n)}
			var key func(int) string
			if lim != nil {
				opts = append(opts, dispatcher.WithLimiter(lim))
				key = func(i int) string { return ks[i%len(ks)] }
			}
			d, err := dispatcher.New(h, key, opts...)
			if err != nil {
				panic(err)
			}
			ctx := context.Background()
			for i := range n {
				if _, err := d.Submit(ctx, i); err != nil {
					panic(err)
				}
			}
			return func() { d.Shutdown(ctx) }
		}
	}
	pondFill := func(gate chan struct{}) func() {
		p := pond.NewResultPool[int](poolWorkers)
		for i := range n {
			p.SubmitErr(func() (int, error) { <-gate; return i, nil })
		}
		return p.StopAndWait
	}
	res := repeat(r.reps,
		contender{"ours", func() sample { return measureHold(n, ours(nil)) }},
		contender{"ours-lim", func() sample { return measureHold(n, ours(lim)) }},
		contender{"pond", func() sample { return measureHold(n, pondFill) }},
	)
	m := metricSpec{key: "B/job", label: "memory per queued job", unit: "bytes", better: "lower",
		note: "100,000 jobs queued behind 8 blocked workers, heap after GC"}
	r.compare(m, "Dispatcher", res["ours"], "pond/v2 ResultPool", res["pond"])
	r.compare(m, "Dispatcher + memstore, 1,000 keys", res["ours-lim"], "pond/v2 ResultPool", res["pond"])
}

// measureHold queues n jobs with fill, whose handlers block until gate is
// closed, and returns the heap they hold per job after a collection.
func measureHold(n int, fill func(gate chan struct{}) func()) sample {
	gate := make(chan struct{})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := fill(gate)
	runtime.GC()
	runtime.ReadMemStats(&after)
	close(gate)
	stop()
	return sample{"B/job": (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(n)}
}

// keyMemory measures what a dispatcher keeps per distinct key once the
// key's jobs are done: n jobs with n distinct keys run to completion on a
// live dispatcher, then the heap after a collection, per key. The anchor
// is the hand-made equivalent, a pond pool waiting in its task on a map of
// rate.Limiter (which never forgets a key either).
func keyMemory(r *reporter) {
	const n = 50_000
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("key-%08d", i)
	}
	measure := func(run func() func()) sample {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		keep := run()
		runtime.GC()
		runtime.ReadMemStats(&after)
		keep()
		return sample{"B/key": (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n}
	}
	ours := func() func() {
		lim, store := newMemLimiter(open)
		d, err := dispatcher.New(func(_ context.Context, i int) (int, error) { return i, nil }, func(i int) string { return ks[i] },
			dispatcher.WithWorkers(poolWorkers), dispatcher.WithLimiter(lim), dispatcher.WithQueue(n))
		if err != nil {
			panic(err)
		}
		ctx := context.Background()
		fs := make([]*dispatcher.Future[int], n)
		for i := range n {
			if fs[i], err = d.Submit(ctx, i); err != nil {
				panic(err)
			}
		}
		for _, f := range fs {
			f.Wait(ctx)
		}
		clear(fs)
		return func() { d.Shutdown(ctx); store.Close() }
	}
	anchor := func() func() {
		ml := newMapLimiter(rate.Limit(1e9), 1e9)
		g := mapGlue(ml)
		p := pond.NewResultPool[int](poolWorkers)
		for i := range n {
			p.SubmitErr(func() (int, error) { g(ks[i]); return i, nil })
		}
		p.StopAndWait()
		return func() { runtime.KeepAlive(ml) }
	}
	res := repeat(r.reps,
		contender{"ours", func() sample { return measure(ours) }},
		contender{"anchor", func() sample { return measure(anchor) }},
	)
	r.compare(metricSpec{key: "B/key", label: "memory kept per distinct key after its jobs", unit: "bytes", better: "lower",
		note: "50,000 keys, one job each, dispatcher still running; includes the memstore bucket until its sweep"},
		"Dispatcher + memstore", res["ours"], "pond/v2 + map of rate.Limiter", res["anchor"])
}
