package main

import (
	"fmt"
	"math"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A sample is what one run of one contender measured, by metric name.
type sample map[string]float64

// A contender is one side of a comparison: a name and a function that runs
// it once and returns what it measured.
type contender struct {
	name string
	run  func() sample
}

// repeat runs every contender reps times, interleaved (ours, anchor, ours,
// anchor, ...) so that a drift of the machine's speed during the run
// weighs on all of them alike. It returns each contender's samples in the
// order given. A warm-up run of each, not recorded, comes first.
func repeat(reps int, cs ...contender) map[string][]sample {
	out := make(map[string][]sample, len(cs))
	for _, c := range cs {
		c.run()
	}
	for range reps {
		for _, c := range cs {
			out[c.name] = append(out[c.name], c.run())
		}
	}
	return out
}

// A summary is a metric over repetitions: its median and its range.
type summary struct {
	Median, Min, Max float64
	N                int
}

func summarize(ss []sample, metric string) summary {
	vs := make([]float64, 0, len(ss))
	for _, s := range ss {
		if v, ok := s[metric]; ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(vs)
	med := vs[len(vs)/2]
	if len(vs)%2 == 0 {
		med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return summary{Median: med, Min: vs[0], Max: vs[len(vs)-1], N: len(vs)}
}

// A loop runs n iterations of an operation as worker w of a parallel run.
// Each contender writes its own loop, so the harness adds no call per
// operation.
type loop func(w, n int)

// timeLoop runs n iterations split across g goroutines started together
// and returns the wall time and the heap allocations they made.
func timeLoop(g, n int, f loop) (time.Duration, uint64) {
	var (
		ready, done sync.WaitGroup
		start       = make(chan struct{})
	)
	ready.Add(g)
	done.Add(g)
	for w := range g {
		share := n / g
		if w < n%g {
			share++
		}
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			f(w, share)
		}()
	}
	ready.Wait()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	close(start)
	done.Wait()
	elapsed := time.Since(t0)
	runtime.ReadMemStats(&after)
	return elapsed, after.Mallocs - before.Mallocs
}

// micro returns a contender that measures an operation as testing.B
// would: on its first run it grows n until a run lasts about d, then every
// run does n iterations and reports ns/op (wall time over all goroutines'
// operations, as b.RunParallel does), allocs/op and ops/s.
func micro(name string, g int, d time.Duration, f loop) contender {
	n := 0
	measure := func() sample {
		elapsed, mallocs := timeLoop(g, n, f)
		return sample{
			"ns/op":     float64(elapsed.Nanoseconds()) / float64(n),
			"allocs/op": float64(mallocs) / float64(n),
			"ops/s":     float64(n) / elapsed.Seconds(),
		}
	}
	return contender{name: name, run: func() sample {
		if n > 0 {
			return measure()
		}
		n = g
		for {
			elapsed, _ := timeLoop(g, n, f)
			if elapsed >= d || n >= 1<<31 {
				return measure()
			}
			// Aim 20% past d, growing at most 100× a step, as testing does.
			next := int(float64(n) * 1.2 * float64(d) / float64(max(elapsed, time.Microsecond)))
			n = min(max(next, n+1), 100*n)
		}
	}}
}

// calibrated returns a contender that runs f with a size chosen once, on
// its first call, so that a run lasts about d; later calls reuse the size
// so that every repetition does the same work. f returns its sample; the
// size grows from start until a run lasts at least d/4.
func calibrated(name string, start int, d time.Duration, f func(n int) sample) contender {
	n := 0
	return contender{name: name, run: func() sample {
		if n == 0 {
			n = start
			for {
				t0 := time.Now()
				s := f(n)
				el := time.Since(t0)
				if el >= d/4 {
					n = max(int(float64(n)*float64(d)/float64(el)), 1)
					return s
				}
				n *= 4
			}
		}
		return f(n)
	}}
}

// A peakMeter samples the heap in use (live and not yet collected objects,
// plus goroutine stacks) every millisecond and keeps the peak above the
// level at its start.
type peakMeter struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

var memMetrics = []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/stacks:bytes"}

func heapInUse(ms []metrics.Sample) uint64 {
	metrics.Read(ms)
	var n uint64
	for _, m := range ms {
		n += m.Value.Uint64()
	}
	return n
}

// startPeak collects garbage, takes the current heap as the base and
// starts sampling.
func startPeak() *peakMeter {
	runtime.GC()
	ms := make([]metrics.Sample, len(memMetrics))
	for i, name := range memMetrics {
		ms[i].Name = name
	}
	p := &peakMeter{base: heapInUse(ms), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			p.observe(heapInUse(ms))
			select {
			case <-t.C:
			case <-p.stop:
				p.observe(heapInUse(ms))
				return
			}
		}
	}()
	return p
}

func (p *peakMeter) observe(v uint64) {
	if v > p.base && v-p.base > p.peak.Load() {
		p.peak.Store(v - p.base)
	}
}

// Stop ends sampling and returns the peak in bytes above the base.
func (p *peakMeter) Stop() float64 {
	close(p.stop)
	<-p.done
	return float64(p.peak.Load())
}

// mallocs returns the number of heap allocations so far.
func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// keys returns n bucket keys.
func keys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprint("tenant-", i)
	}
	return ks
}
