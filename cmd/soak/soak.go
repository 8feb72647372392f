package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// Bounds of the end of a run.
const (
	drainTimeout     = 2 * time.Minute  // for the jobs queued at the end of the run (a quota may hold some for a key's life)
	interruptTimeout = 5 * time.Second  // after Ctrl-C: then what is queued is resolved with ErrClosed
	readTimeout      = 5 * time.Second  // for one sample's reads
	settleTimeout    = 10 * time.Second // for the goroutines to end after everything is closed
	keyStats         = 1000             // keys with figures of their own (dispatcher.WithKeyStats): bounded, and exercised
)

// A soak is one run: the dispatcher under load, its backend, and what the
// sampler has read.
type soak struct {
	cfg       *config
	b         *backend
	d         *dispatcher.Dispatcher[job, uint64]
	resources []resource
	limits    map[byte]bucket.Limit
	leases    bool

	start     time.Time
	gen       *generator
	futures   futures
	keys      atomic.Int64 // keys given their first job, published by the producer
	submitErr error        // a Submit that failed for another reason than the end of the run

	samples []kept
	ended   time.Duration // when the load stopped, since start
	drained time.Duration // how long Shutdown took
	before  int           // goroutines before the run
	after   int           // and after everything was closed
	out     *os.File
	enc     *json.Encoder
	stderr  io.Writer
}

// runSoak runs the soak cfg describes and reports on stdout (failures on
// stderr, a line each); it returns the exit status.
func runSoak(ctx context.Context, cfg *config, stdout, stderr io.Writer) int {
	before := runtime.NumGoroutine()
	s, err := newSoak(ctx, cfg, handle, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", oneLine(err))
		return exitUsage
	}
	s.before = before
	s.writeHeader(stdout)
	interrupted, shutdownErr := s.run(ctx, stdout)
	s.futures.collect()
	failures := s.check(shutdownErr, interrupted)
	s.b.close()
	if s.out != nil {
		if err := s.out.Close(); err != nil {
			failures = append(failures, fmt.Sprintf("-out: %v", err))
		}
	}
	if s.after = settle(before); s.after > before {
		failures = append(failures, fmt.Sprintf("goroutines: %d after everything was closed, %d before the run", s.after, before))
	}
	verdicts := s.judge()
	for _, v := range verdicts {
		if v.ok && v.grew {
			failures = append(failures, v.reason(v.r))
		}
	}
	s.writeReport(stdout, verdicts, interrupted)
	if cfg.plot != "" {
		if err := writePlot(cfg.plot, s, verdicts); err != nil {
			failures = append(failures, fmt.Sprintf("-plot: %v", err))
		} else {
			fmt.Fprintf(stdout, "chart: %s\n", cfg.plot)
		}
	}
	for _, f := range failures {
		fmt.Fprintf(stderr, "soak: %s\n", f)
	}
	switch {
	case interrupted:
		return exitInterrupted
	case len(failures) > 0:
		fmt.Fprintln(stdout, "FAIL")
		return exitFailed
	}
	fmt.Fprintln(stdout, "PASS")
	return exitOK
}

// newSoak opens the backend and makes the dispatcher, which runs h.
func newSoak(ctx context.Context, cfg *config, h dispatcher.Handler[job, uint64], stderr io.Writer) (*soak, error) {
	b, err := openBackend(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &soak{cfg: cfg, b: b, stderr: stderr}
	fail := func(err error) (*soak, error) {
		b.close()
		if s.out != nil {
			s.out.Close()
		}
		return nil, err
	}
	_, s.leases = b.Backend.(driver.LeaseBackend)
	if s.limits, err = limits(cfg.keyLife, s.leases); err != nil {
		return fail(err)
	}
	lim, err := bucket.NewLimiter(b.Backend, s.limits[classes[0].letter], bucket.WithKeyLimit(keyLimit(s.limits)))
	if err != nil {
		return fail(err)
	}
	if cfg.out != "" {
		if s.out, err = os.Create(cfg.out); err != nil {
			return fail(fmt.Errorf("-out: %v", err))
		}
		s.enc = json.NewEncoder(s.out)
	}
	s.d, err = dispatcher.NewWithCost(h, func(j job) string { return j.key }, func(j job) int { return j.cost },
		dispatcher.WithLimiter(lim), dispatcher.WithWorkers(cfg.workers), dispatcher.WithQueue(cfg.queue),
		dispatcher.WithKeyStats(keyStats))
	if err != nil {
		return fail(err)
	}
	s.resources = append(processResources(), b.resources...)
	return s, nil
}

// run loads the dispatcher for the run's duration, or until ctx ends,
// sampling as it goes, then shuts it down. It reports whether ctx ended
// the run, and Shutdown's error.
func (s *soak) run(ctx context.Context, stdout io.Writer) (interrupted bool, shutdownErr error) {
	s.start = time.Now()
	s.gen = newGenerator(s.cfg, s.start, s.limits)
	s.sample(ctx, stdout) // before any load
	var stop atomic.Bool
	var producer sync.WaitGroup
	producer.Go(func() { s.produce(&stop) })

	for k := time.Duration(1); k*s.cfg.sample <= s.cfg.duration && !interrupted; k++ {
		if interrupted = !wait(ctx, s.start.Add(k*s.cfg.sample)); !interrupted {
			s.sample(ctx, stdout)
		}
	}
	if !interrupted {
		interrupted = !wait(ctx, s.start.Add(s.cfg.duration))
	}
	stop.Store(true)
	s.ended = time.Since(s.start)
	timeout := drainTimeout
	if interrupted {
		timeout = interruptTimeout
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	shutdownErr = s.d.Shutdown(sctx) // wakes a producer blocked in Submit with ErrClosed
	s.drained = time.Since(s.start) - s.ended
	producer.Wait()
	return interrupted, shutdownErr
}

// produce submits jobs as fast as the dispatcher takes them until stop is
// set or the dispatcher closes. It owns s.gen and s.futures' list.
func (s *soak) produce(stop *atomic.Bool) {
	for !stop.Load() {
		j, ok := s.gen.next(time.Now())
		s.keys.Store(s.gen.firsts)
		if !ok {
			time.Sleep(min(time.Until(s.gen.nextBirth()), 10*time.Millisecond))
			continue
		}
		f, err := s.d.Submit(context.Background(), j)
		if errors.Is(err, dispatcher.ErrClosed) {
			return
		}
		if err != nil {
			s.submitErr = err
			return
		}
		s.futures.add(f)
	}
}

// sample reads every resource and the dispatcher's figures, keeps them,
// writes them to -out and prints a line of them.
func (s *soak) sample(ctx context.Context, stdout io.Writer) {
	at := time.Since(s.start)
	if len(s.samples) == 0 {
		at = 0
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readTimeout)
	defer cancel()
	sm := sample{At: at, Elapsed: at.Seconds(), Resources: make(map[string]float64, len(s.resources))}
	k := kept{at: at, values: make([]float64, len(s.resources))}
	for i, r := range s.resources {
		v, err := r.read(rctx)
		if err != nil {
			fmt.Fprintf(s.stderr, "soak: at %v: %s: %v\n", at.Round(time.Millisecond), r.name, oneLine(err))
			k.values[i] = math.NaN()
			continue
		}
		sm.Resources[r.name], k.values[i] = v, v
	}
	sm.Stats = newStatsFigures(s.d.Stats())
	k.finished = sm.Stats.finished()
	fs := &s.futures
	sm.Jobs = jobFigures{
		Accepted: fs.accepted.Load(), Resolved: fs.resolved(),
		Succeeded: fs.succeeded.Load(), Failed: fs.failed.Load(), Cancelled: fs.cancelled.Load(),
		Keys: s.keys.Load(),
	}
	if n := len(s.samples); n > 0 {
		prev := s.samples[n-1]
		if dt := (at - prev.at).Seconds(); dt > 0 {
			k.perS = float64(k.finished-prev.finished) / dt
		}
	}
	sm.Jobs.PerSecond = k.perS
	s.samples = append(s.samples, k)
	if s.enc != nil {
		if err := s.enc.Encode(sm); err != nil {
			fmt.Fprintf(s.stderr, "soak: -out: %v\n", err)
			s.enc = nil
		}
	}
	s.writeSample(stdout, sm)
}

// check returns what went wrong with the jobs and the shutdown, a line
// each: every accepted job must have been resolved, none failed.
func (s *soak) check(shutdownErr error, interrupted bool) []string {
	var failures []string
	fs := &s.futures
	st := s.d.Stats()
	if s.submitErr != nil {
		failures = append(failures, fmt.Sprintf("jobs: Submit failed: %v", s.submitErr))
	}
	if shutdownErr != nil && !interrupted {
		failures = append(failures, fmt.Sprintf("shutdown: the dispatcher did not drain in %v (%v): its queued jobs were resolved with ErrClosed", drainTimeout, shutdownErr))
	}
	if n := len(fs.pending); n > 0 {
		failures = append(failures, fmt.Sprintf("jobs: %d of %d accepted jobs were never resolved", n, fs.accepted.Load()))
	}
	if n := fs.failed.Load(); n > 0 {
		failures = append(failures, fmt.Sprintf("jobs: %d failed, the first with: %v", n, oneLine(fs.failure())))
	}
	if n := fs.cancelled.Load(); n > 0 && !interrupted {
		failures = append(failures, fmt.Sprintf("jobs: %d resolved without running (ErrClosed or a context's error)", n))
	}
	if st.Submitted != fs.accepted.Load() || st.Succeeded != fs.succeeded.Load() || st.Failed != fs.failed.Load() || st.Cancelled != fs.cancelled.Load() {
		failures = append(failures, fmt.Sprintf("jobs: the dispatcher counts %d submitted, %d succeeded, %d failed, %d cancelled; the futures %d, %d, %d, %d",
			st.Submitted, st.Succeeded, st.Failed, st.Cancelled, fs.accepted.Load(), fs.succeeded.Load(), fs.failed.Load(), fs.cancelled.Load()))
	}
	return failures
}

// A judgement is a resource's verdict, if it could be judged.
type judgement struct {
	r resource
	verdict
	ok     bool
	points []point
}

// judge judges every judged resource on the samples after warm-up.
func (s *soak) judge() []judgement {
	out := make([]judgement, 0, len(s.resources))
	for i, r := range s.resources {
		var pts []point
		for _, k := range s.samples {
			if !math.IsNaN(k.values[i]) {
				pts = append(pts, point{k.at, k.values[i]})
			}
		}
		j := judgement{r: r, points: pts}
		if r.judged {
			j.verdict, j.ok = judge(judged(pts, s.cfg.warmup), r.floor)
		}
		out = append(out, j)
	}
	return out
}

// wait waits until t and reports true, or until ctx ends and reports
// false.
func wait(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// settle waits, up to settleTimeout, for the goroutines to be no more than
// want, and returns how many there are: a closed pool or store may end
// its last goroutines a moment after Close returns.
func settle(want int) int {
	deadline := time.Now().Add(settleTimeout)
	for {
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}
