package dispatcher

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/internal/latency"
)

// Stats is a snapshot of a Dispatcher's figures. Counters count jobs since
// New; Submitted = Succeeded + Failed + Cancelled + Queued + Running.
type Stats struct {
	Submitted int64 // jobs accepted
	Queued    int64 // accepted and not started, including Waiting
	Waiting   int64 // of Queued, jobs of keys their bucket holds back right now (throttled, paused or booked ahead)
	Running   int64 // handlers running
	Succeeded int64 // handler returned a nil error
	Failed    int64 // handler returned an error or panicked, or the job's limit can never admit it
	Cancelled int64 // resolved before starting: the job's context ended, or ErrClosed
	Retried   int64 // times a job was put back after a retry-after
	// Requeued counts the times an admitted job went back to its key's
	// queue to be admitted again: it reached its worker late or behind its
	// key (paused, or an earlier job back in the queue), or it was booked
	// ahead when that happened to its key or a retry-after paused it.
	// Without cancellations, every run under a limit took one admission:
	// Admitted = runs of limited keys + Requeued.
	Requeued int64

	// Admissions the backend decided, by its answer. Admitted: allowed,
	// and the job started or was booked a slot. Throttled: refused, the
	// key waits for its next slot. Paused: allowed, but given back because
	// a retry-after paused the key while the backend decided. AtCap:
	// refused because the key's limit caps its work in flight
	// (bucket.Limit.Inflight) and its leases were all held.
	Admitted, Throttled, Paused, AtCap int64
	// LeasesLost counts the leases of running handlers that a renewal
	// found gone: they expired (the process stalled longer than the lease
	// TTL, or the backend lost them), and another holder may have taken
	// the place while the handler ran.
	LeasesLost int64
	// Learned counts the feedback keys of learned limits took from their
	// handlers (bucket.Report, middleware.CheckResponse).
	Learned int64

	RoundTrips       int64 // admission batches sent to the backend (see Histograms)
	BackendErrors    int64 // admissions the backend failed to decide (retried later)
	LastBackendError error

	// AdmissionWait is the time from Submit to the handler's start, one
	// per run: a run after a retry-after counts from when the job was
	// put back (jobinfo.Info.Waited).
	AdmissionWait Percentiles
}

// KeyStats are one key's figures (Dispatcher.KeyStats).
type KeyStats struct {
	Submitted, Succeeded, Failed, Cancelled, Retried int64
	Throttled                                        int64 // admissions its bucket refused
	Late                                             int64 // admissions given back because the job reached a worker late
	// Interval is the emission interval the key's bucket applied at its
	// latest admission or feedback: its limit's own, or the slower one it
	// learned (bucket.Limit.WithFloor). 0 before any.
	Interval      time.Duration
	AdmissionWait Percentiles
}

// Percentiles summarise durations. They are read from histograms: the
// dispatcher's has eight buckets per power of two, so its percentiles are
// within 12.5% above the truth; a key's has four, from a microsecond to 39
// hours, so its are within 25% (and shorter waits read as about a
// microsecond). Max is exact.
type Percentiles struct {
	Count         int64
	P50, P90, P99 time.Duration
	Max           time.Duration
}

// Stats returns a snapshot of the dispatcher's totals. It is safe to call
// at any time, and costs the same with one key or a million: a key's own
// figures are read with KeyStats.
func (d *Dispatcher[T, R]) Stats() Stats {
	c := &d.stats
	st := Stats{
		Submitted:     c.submitted.Load(),
		Retried:       c.retried.Load(),
		Requeued:      c.requeued.Load(),
		Admitted:      c.admitted.Load(),
		Throttled:     c.throttled.Load(),
		Paused:        c.paused.Load(),
		AtCap:         c.atCap.Load(),
		LeasesLost:    c.leasesLost.Load(),
		Learned:       c.learned.Load(),
		BackendErrors: c.backendErrors.Load(),
	}
	for i := range c.roundTrips.counts {
		st.RoundTrips += c.roundTrips.counts[i].Load()
	}
	wait := newHistogramSum(fine, len(histogram{}.counts))
	tally := func(c *jobCounters) {
		st.Succeeded += c.outcome(outcomeSucceeded).Load()
		st.Failed += c.outcome(outcomeFailed).Load()
		st.Cancelled += c.outcome(outcomeCancelled).Load()
	}
	tally(&c.jobCounters)
	for w := range d.crew {
		tally(&d.crew[w].jobCounters)
		wait.add(&d.crew[w].wait)
		if d.crew[w].current.Load() != nil {
			st.Running++
		}
	}
	st.AdmissionWait = wait.percentiles()
	st.Queued = max(st.Submitted-st.Succeeded-st.Failed-st.Cancelled-st.Running, 0)
	c.mu.Lock()
	st.LastBackendError = c.lastBackendErr
	c.mu.Unlock()
	if s := d.sched; s != nil {
		s.mu.Lock()
		st.Waiting = int64(s.slots.Len()) + s.held
		s.mu.Unlock()
	}
	return st
}

// KeyStats returns the figures of key, if the Dispatcher keeps figures
// per key (WithKeyStats), had room for key's, and key was used within the
// last minute: a key's figures are forgotten with its queue. It costs a map lookup under the
// scheduler's lock and the read of the key's histogram.
func (d *Dispatcher[T, R]) KeyStats(key string) (KeyStats, bool) {
	s := d.sched
	if s == nil {
		return KeyStats{}, false
	}
	// The figures, not the key's state: once the lock is let go, a
	// dropped state may serve another key (see dropIdle).
	var c *keyCounters
	s.mu.Lock()
	if k := s.keys[key]; k != nil {
		c = k.stats
	}
	s.mu.Unlock()
	if c == nil {
		return KeyStats{}, false
	}
	return KeyStats{
		Submitted:     c.submitted.Load(),
		Succeeded:     c.outcome(outcomeSucceeded).Load(),
		Failed:        c.outcome(outcomeFailed).Load(),
		Cancelled:     c.outcome(outcomeCancelled).Load(),
		Retried:       c.retried.Load(),
		Throttled:     c.throttled.Load(),
		Late:          c.late.Load(),
		Interval:      time.Duration(c.interval.Load()),
		AdmissionWait: c.wait.sum().percentiles(),
	}, true
}

// jobCounters count jobs, for the dispatcher and for each key.
type jobCounters struct {
	submitted, retried atomic.Int64
	outcomes           [3]atomic.Int64 // by outcome
}

func (c *jobCounters) outcome(o outcome) *atomic.Int64 { return &c.outcomes[o] }

type counters struct {
	jobCounters
	requeued, backendErrors     atomic.Int64
	admitted, throttled, paused atomic.Int64
	atCap, leasesLost, learned  atomic.Int64
	roundTrips                  histogram // by the scheduler's rounds, at most rounds at once

	mu             sync.Mutex
	lastBackendErr error
}

// countAdmissions adds a round's admissions, by the backend's answer.
func (c *counters) countAdmissions(admitted, throttled, paused, atCap int64) {
	for _, n := range [...]struct {
		c *atomic.Int64
		n int64
	}{{&c.admitted, admitted}, {&c.throttled, throttled}, {&c.paused, paused}, {&c.atCap, atCap}} {
		if n.n > 0 {
			n.c.Add(n.n)
		}
	}
}

func (c *counters) setBackendErr(err error) {
	c.mu.Lock()
	c.lastBackendErr = err
	c.mu.Unlock()
}

// keyCounters are one key's figures, kept with its queue: about 1.3 KiB.
type keyCounters struct {
	jobCounters
	throttled, late, interval atomic.Int64
	wait                      keyHistogram
}

var (
	// fine is the dispatcher's: every duration, within 12.5%.
	fine = latency.NewShape(3, 0, math.MaxInt64)
	// coarse is each key's, a quarter of the memory: within 25% from a
	// microsecond to 39 hours.
	coarse = latency.NewShape(2, 1<<10, 1<<47-1)
)

// A histogram counts durations in the buckets of fine; a keyHistogram in
// those of coarse (TestHistogramShapes checks the sizes), and a histogram
// their sum too. Recording is lock-free.
type (
	histogram struct {
		counts   [488]atomic.Int64
		max, sum atomic.Int64
	}
	keyHistogram struct {
		counts [148]atomic.Int64
		max    atomic.Int64
	}
)

func (h *histogram) record(v int64) {
	record(fine, h.counts[:], &h.max, v)
	h.sum.Add(v)
}

func (h *keyHistogram) record(v int64) { record(coarse, h.counts[:], &h.max, v) }

func (h *keyHistogram) sum() *histogramSum {
	s := newHistogramSum(coarse, len(h.counts))
	s.addCounts(h.counts[:], &h.max)
	return s
}

func record(sh latency.Shape, counts []atomic.Int64, top *atomic.Int64, v int64) {
	counts[sh.Bucket(v)].Add(1)
	for {
		m := top.Load()
		if v <= m || top.CompareAndSwap(m, v) {
			return
		}
	}
}

// A histogramSum adds up histograms of one shape kept apart (by worker)
// to read them as one.
type histogramSum struct {
	shape         latency.Shape
	counts        []int64
	n, max, total int64 // total: the sum of the durations, for histograms
}

func newHistogramSum(sh latency.Shape, buckets int) *histogramSum {
	return &histogramSum{shape: sh, counts: make([]int64, buckets)}
}

func (s *histogramSum) add(h *histogram) {
	s.addCounts(h.counts[:], &h.max)
	s.total += h.sum.Load()
}

func (s *histogramSum) addCounts(counts []atomic.Int64, top *atomic.Int64) {
	for i := range counts {
		c := counts[i].Load()
		s.counts[i] += c
		s.n += c
	}
	s.max = max(s.max, top.Load())
}

func (s *histogramSum) percentiles() Percentiles {
	counts, n := s.counts, s.n
	p := Percentiles{Count: n, Max: time.Duration(s.max)}
	if n == 0 {
		return p
	}
	q := func(f float64) time.Duration {
		rank := int64(f*float64(n) + 0.5)
		rank = min(max(rank, 1), n)
		var seen int64
		for i, c := range counts {
			if seen += c; seen >= rank {
				return min(time.Duration(s.shape.Upper(i)), p.Max)
			}
		}
		return p.Max
	}
	p.P50, p.P90, p.P99 = q(0.50), q(0.90), q(0.99)
	return p
}
