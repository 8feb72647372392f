package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/alitto/pond/v2"
	"go.uber.org/ratelimit"
	"golang.org/x/time/rate"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

const (
	pacingTime = time.Second
	window     = 10 * time.Millisecond
)

// A waiter blocks until the limiter lets one unit pass.
type waiter func()

// The waiters of each library at n per second, burst 1, on one key.
func oursWaiter(n int64) waiter {
	l, _ := newMemLimiter(bucket.PerSecond(n))
	ctx := context.Background()
	return func() {
		if err := l.Wait(ctx, "k"); err != nil {
			panic(err)
		}
	}
}

func rateWaiter(n int64) waiter {
	l := rate.NewLimiter(rate.Limit(n), 1)
	ctx := context.Background()
	return func() {
		if err := l.Wait(ctx); err != nil {
			panic(err)
		}
	}
}

// uberWaiter uses the default options, as most users do: a slack of 10
// (after idle, up to 10 units pass at once to catch up).
func uberWaiter(n int64) waiter {
	l := ratelimit.New(int(n))
	return func() { l.Take() }
}

// waitLoop runs g goroutines calling wait until d has passed and returns
// the times, in ns since the start, at which wait returned.
func waitLoop(g int, d time.Duration, wait waiter) []int64 {
	var (
		mu  sync.Mutex
		all []int64
		wg  sync.WaitGroup
	)
	start := make(chan struct{})
	t0 := time.Now()
	wg.Add(g)
	for range g {
		go func() {
			defer wg.Done()
			var mine []int64
			<-start
			for {
				wait()
				at := time.Since(t0)
				if at >= d {
					break
				}
				mine = append(mine, int64(at))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	t0 = time.Now()
	close(start)
	wg.Wait()
	slices.Sort(all)
	return all
}

// maxIn returns the most starts in any half-open window [t, t+w).
func maxIn(starts []int64, w time.Duration) int {
	best, j := 0, 0
	for i := range starts {
		for starts[i]-starts[j] >= int64(w) {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// excess returns the least k such that starts conform to lim with its
// burst raised by k (backendtest.Check, exact): 0 means the starts conform
// to lim itself. It gives up at 1000.
func excess(lim bucket.Limit, starts []int64) int {
	ss := make([]backendtest.Start, len(starts))
	for i, at := range starts {
		ss[i] = backendtest.Start{At: at, Cost: 1}
	}
	lo, hi := 0, 1000 // conforms at hi (assumed), find the least
	if backendtest.Check(lim, ss) == nil {
		return 0
	}
	if backendtest.Check(lim.WithBurst(lim.Burst+int64(hi)), ss) != nil {
		return hi
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if backendtest.Check(lim.WithBurst(lim.Burst+int64(mid)), ss) == nil {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

// paced summarizes starts recorded over d at n per second, burst 1.
func paced(starts []int64, n int64, d time.Duration) sample {
	lim := bucket.PerSecond(n)
	return sample{
		"max/10ms": float64(maxIn(starts, window)),
		"achieved": 100 * float64(len(starts)) / (float64(n) * d.Seconds()),
		"excess":   float64(excess(lim, starts)),
	}
}

var waiters = []struct {
	key, name string
	make      func(n int64) waiter
}{
	{"ours", "leakybucket Limiter.Wait", oursWaiter},
	{"rate", "x/time/rate Wait", rateWaiter},
	{"uber", "uber ratelimit Take (slack 10)", uberWaiter},
}

func waiterContenders(n int64, g int, d time.Duration) []contender {
	var cs []contender
	for _, w := range waiters {
		cs = append(cs, contender{w.key, func() sample { return paced(waitLoop(g, d, w.make(n)), n, d) }})
	}
	return cs
}

var (
	maxWindow = metricSpec{key: "max/10ms", label: "most starts in any 10 ms (ideal 10)", unit: "starts", better: "lower", target: atMost(11, "≤ 11")}
	excessM   = metricSpec{key: "excess", label: "units beyond the limit (backendtest.Check)", unit: "units", better: "lower",
		note: "the least extra burst for which the starts conform; 1 is one millisecond of jitter at 1,000/s"}
	achieved = metricSpec{key: "achieved", label: "achieved rate", unit: "% of limit", better: "higher", target: atLeast(99, "≥ 99%")}
)

// pacingWaiters: 16 goroutines wait in a loop on one key at 1,000/s,
// burst 1, for a second; the ideal is 10 starts in any 10 ms.
func pacingWaiters(r *reporter) {
	res := repeat(r.reps, waiterContenders(1000, 16, pacingTime)...)
	for _, w := range waiters[1:] {
		r.compare(maxWindow, waiters[0].name, res["ours"], w.name, res[w.key])
	}
	for _, w := range waiters[1:] {
		r.compare(excessM, waiters[0].name, res["ours"], w.name, res[w.key])
	}
}

// pacingHigh: 16 goroutines at 10,000/s, burst 1, for a second: the rate
// achieved, where sleeping to the next slot (100 µs) is hard.
func pacingHigh(r *reporter) {
	res := repeat(r.reps, waiterContenders(10_000, 16, pacingTime)...)
	for _, w := range waiters[1:] {
		r.compare(achieved, waiters[0].name, res["ours"], w.name, res[w.key])
	}
}

// pacingStall: one goroutine waits in a loop at 1,000/s, burst 1, stops
// calling for 20 ms, then resumes. How many pass at once after it resumes
// (within half an interval of the first)? A limiter must not let more than
// its burst through.
func pacingStall(r *reporter) {
	const n = 1000
	run := func(wait waiter) sample {
		var starts []int64
		t0 := time.Now()
		for range 100 {
			wait()
		}
		time.Sleep(20 * time.Millisecond)
		for range 30 {
			wait()
			starts = append(starts, int64(time.Since(t0)))
		}
		burst := 0
		for _, at := range starts {
			if at-starts[0] <= int64(time.Second/n/2) {
				burst++
			}
		}
		return sample{"burst": float64(burst)}
	}
	var cs []contender
	for _, w := range waiters {
		cs = append(cs, contender{w.key, func() sample { return run(w.make(n)) }})
	}
	res := repeat(r.reps, cs...)
	m := metricSpec{key: "burst", label: "starts at once after a 20 ms stall (burst 1)", unit: "starts", better: "lower", target: atMost(1, "≤ burst (1)")}
	for _, w := range waiters[1:] {
		r.compare(m, waiters[0].name, res["ours"], w.name, res[w.key])
	}
}

// dispatchPaced runs jobs on one key through our Dispatcher (16 workers,
// memstore at n per second, burst 1) and returns the handlers' start
// times and the admissions given back because a job reached its worker
// late. Jobs still queued 1 s after the expected end are dropped (a hard
// Shutdown), so that a slow run cannot hold up the program.
func dispatchPaced(n int64, jobs int) ([]int64, int64) {
	l, store := newMemLimiter(bucket.PerSecond(n))
	defer store.Close()
	starts := make([]int64, jobs)
	var t0 time.Time
	d, err := dispatcher.New(func(_ context.Context, i int) (int, error) {
		starts[i] = int64(time.Since(t0))
		return i, nil
	}, nil, dispatcher.WithWorkers(16), dispatcher.WithLimiter(l), dispatcher.WithQueue(jobs), dispatcher.WithKeyStats(1))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	t0 = time.Now()
	for i := range jobs {
		if _, err := d.Submit(ctx, i); err != nil {
			panic(err)
		}
	}
	expected := time.Duration(int64(jobs) * int64(time.Second) / n)
	sctx, cancel := context.WithDeadline(ctx, t0.Add(expected+time.Second))
	defer cancel()
	d.Shutdown(sctx)
	k, _ := d.KeyStats("default") // the one key
	return started(starts), k.Late
}

// started returns the start times of the jobs that started, sorted.
func started(starts []int64) []int64 {
	out := starts[:0]
	for _, s := range starts {
		if s != 0 {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// pondPaced is the hand-made equivalent: a pond pool of 16 workers whose
// task waits on a rate.Limiter first.
func pondPaced(n int64, jobs int) []int64 {
	l := rate.NewLimiter(rate.Limit(n), 1)
	ctx := context.Background()
	starts := make([]int64, jobs)
	p := pond.NewResultPool[int](16)
	t0 := time.Now()
	for i := range jobs {
		p.SubmitErr(func() (int, error) {
			if err := l.Wait(ctx); err != nil {
				return 0, err
			}
			starts[i] = int64(time.Since(t0))
			return i, nil
		})
	}
	p.StopAndWait()
	return started(starts)
}

// dispatchSample summarizes the start times of jobs run at n per second.
func dispatchSample(starts []int64, late int64, n int64) sample {
	span := float64(starts[len(starts)-1]-starts[0]) / 1e9
	return sample{
		"max/10ms": float64(maxIn(starts, window)),
		"achieved": 100 * float64(len(starts)-1) / span / float64(n),
		"excess":   float64(excess(bucket.PerSecond(n), starts)),
		"late":     float64(late),
	}
}

// pacingDispatcher: what a rate-limited service sees of jobs run through
// a Dispatcher at n per second (handler start times), against a pond pool
// whose task waits on a rate.Limiter.
func pacingDispatcher(n int64) func(r *reporter) {
	return func(r *reporter) {
		jobs := int(n * int64(pacingTime) / int64(time.Second))
		res := repeat(r.reps,
			contender{"ours", func() sample { starts, late := dispatchPaced(n, jobs); return dispatchSample(starts, late, n) }},
			contender{"pond", func() sample { return dispatchSample(pondPaced(n, jobs), 0, n) }},
		)
		const ours, anchor = "Dispatcher + memstore", "pond/v2 + rate.Limiter.Wait in the task"
		if n == 1000 {
			r.compare(maxWindow, ours, res["ours"], anchor, res["pond"])
			r.compare(excessM, ours, res["ours"], anchor, res["pond"])
		}
		r.compare(achieved, ours, res["ours"], anchor, res["pond"])
		r.compare(metricSpec{key: "late", label: "admissions given back: job reached its worker late", unit: "jobs", better: "lower"},
			ours, res["ours"], "", nil)
		if n != 1000 {
			m := maxWindow
			m.label, m.target = fmt.Sprintf("most starts in any 10 ms (ideal %d)", n/100), nil
			r.compare(m, ours, res["ours"], anchor, res["pond"])
		}
	}
}

// stallChild runs 600 jobs at 1,000/s, burst 1, through our Dispatcher
// (ours) or pond + rate.Limiter.Wait (anchor), says "started" as it
// submits the first, and prints the start times as JSON when done. The
// parent stops it with SIGSTOP for 20 ms meanwhile.
func stallChild(ours bool, in io.Reader, out io.Writer) error {
	const n, jobs = 1000, 600
	bufio.NewReader(in).ReadString('\n') // "go"
	fmt.Fprintln(out, "started")
	var starts []int64
	if ours {
		starts, _ = dispatchPaced(n, jobs)
	} else {
		starts = pondPaced(n, jobs)
	}
	return json.NewEncoder(out).Encode(starts)
}

// pacingDispatcherStall: the process running the jobs is stopped for
// 20 ms (SIGSTOP, as a long GC pause, a VM steal or a debugger would) and
// resumed. Do the jobs whose slots passed meanwhile start all at once?
func pacingDispatcherStall(r *reporter) {
	const n = 1000
	run := func(role string) sample {
		c, err := startChild("-child", role)
		if err != nil {
			panic(err)
		}
		defer c.stop()
		c.say("go")
		if l := c.line(); l != "started" {
			panic("child said " + l)
		}
		time.Sleep(200 * time.Millisecond)
		c.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(20 * time.Millisecond)
		c.cmd.Process.Signal(syscall.SIGCONT)
		var starts []int64
		if err := json.Unmarshal([]byte(c.line()), &starts); err != nil {
			panic(err)
		}
		// The stall is the widest gap between starts; count those within
		// half an interval of the first start after it.
		gap, at := int64(0), 0
		for i := 1; i < len(starts); i++ {
			if g := starts[i] - starts[i-1]; g > gap {
				gap, at = g, i
			}
		}
		burst := 0
		for _, s := range starts[at:] {
			if s-starts[at] <= int64(time.Second/n/2) {
				burst++
			}
		}
		return sample{
			"burst":    float64(burst),
			"excess":   float64(excess(bucket.PerSecond(n), starts)),
			"max/10ms": float64(maxIn(starts, window)),
			"gap-ms":   float64(gap) / 1e6,
		}
	}
	res := repeat(r.reps,
		contender{"ours", func() sample { return run("stall-ours") }},
		contender{"pond", func() sample { return run("stall-anchor") }},
	)
	const ours, anchor = "Dispatcher + memstore", "pond/v2 + rate.Limiter.Wait in the task"
	r.compare(metricSpec{key: "burst", label: "starts at once after a 20 ms SIGSTOP (burst 1)", unit: "starts", better: "lower", target: atMost(1, "≤ burst (1)")},
		ours, res["ours"], anchor, res["pond"])
	r.compare(maxWindow, ours, res["ours"], anchor, res["pond"])
	r.compare(excessM, ours, res["ours"], anchor, res["pond"])
}
