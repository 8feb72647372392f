package dispatcher

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
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

	BackendErrors    int64 // admissions the backend failed to decide (retried later)
	LastBackendError error

	// AdmissionWait is the time from Submit to the handler's start.
	AdmissionWait Percentiles
	// Keys has per-key figures for the keys used within the last minute
	// (a key's figures are forgotten with its queue); it is filled in with
	// a limiter only.
	Keys map[string]KeyStats
}

// KeyStats are one key's figures.
type KeyStats struct {
	Submitted, Succeeded, Failed, Cancelled, Retried int64
	Throttled                                        int64 // admissions its bucket refused
	Late                                             int64 // admissions given back because the job reached a worker late
	AdmissionWait                                    Percentiles
}

// Percentiles summarise durations. They are read from a histogram with
// eight buckets per power of two, so each is within 12.5% above the truth.
type Percentiles struct {
	Count         int64
	P50, P90, P99 time.Duration
	Max           time.Duration
}

// Stats returns a snapshot of the dispatcher's figures. It is safe to call
// at any time; its cost grows with the number of keys.
func (d *Dispatcher[T, R]) Stats() Stats {
	c := &d.stats
	st := Stats{
		Submitted:     c.submitted.Load(),
		Retried:       c.retried.Load(),
		BackendErrors: c.backendErrors.Load(),
	}
	var wait histogramSum
	tally := func(c *jobCounters) {
		st.Succeeded += c.outcome(outcomeSucceeded).Load()
		st.Failed += c.outcome(outcomeFailed).Load()
		st.Cancelled += c.outcome(outcomeCancelled).Load()
		wait.add(&c.wait)
	}
	tally(&c.jobCounters)
	for w := range d.crew {
		tally(&d.crew[w].jobCounters)
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
		st.Keys = make(map[string]KeyStats, len(s.keys))
		for name, k := range s.keys {
			c := k.stats
			st.Keys[name] = KeyStats{
				Submitted:     c.submitted.Load(),
				Succeeded:     c.outcome(outcomeSucceeded).Load(),
				Failed:        c.outcome(outcomeFailed).Load(),
				Cancelled:     c.outcome(outcomeCancelled).Load(),
				Retried:       c.retried.Load(),
				Throttled:     c.throttled.Load(),
				Late:          c.late.Load(),
				AdmissionWait: c.wait.sum().percentiles(),
			}
			st.Waiting += int64(k.booked.n)
			if k.phase == keyWaiting {
				st.Waiting += int64(k.jobs.n)
			}
		}
		s.mu.Unlock()
	}
	return st
}

// jobCounters count jobs, for the dispatcher and for each key.
type jobCounters struct {
	submitted, retried atomic.Int64
	outcomes           [3]atomic.Int64 // by outcome
	wait               histogram
}

func (c *jobCounters) outcome(o outcome) *atomic.Int64 { return &c.outcomes[o] }

type counters struct {
	jobCounters
	backendErrors atomic.Int64

	mu             sync.Mutex
	lastBackendErr error
}

func (c *counters) setBackendErr(err error) {
	c.mu.Lock()
	c.lastBackendErr = err
	c.mu.Unlock()
}

// keyCounters are one key's figures, kept with its queue: about 4 KiB.
type keyCounters struct {
	jobCounters
	throttled, late atomic.Int64
}

// histogram counts non-negative nanosecond durations in buckets of eight
// per power of two. Recording is lock-free.
type histogram struct {
	counts [(64 - subBits) << subBits]atomic.Int64
	max    atomic.Int64
}

const subBits = 3

func bucketOf(v int64) int {
	if v < 1<<subBits {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - 1 - subBits // v >> e has subBits+1 bits
	return (e+1)<<subBits | int(v>>e)&(1<<subBits-1)
}

// upper returns the largest value of bucket i.
func upper(i int) int64 {
	if i < 1<<subBits {
		return int64(i)
	}
	e := i>>subBits - 1
	m := int64(i&(1<<subBits-1)) | 1<<subBits
	return (m+1)<<e - 1
}

func (h *histogram) record(v int64) {
	h.counts[bucketOf(v)].Add(1)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// A histogramSum adds up histograms kept apart (by worker) to read them
// as one.
type histogramSum struct {
	counts [len(histogram{}.counts)]int64
	n, max int64
}

func (s *histogramSum) add(h *histogram) {
	for i := range h.counts {
		c := h.counts[i].Load()
		s.counts[i] += c
		s.n += c
	}
	s.max = max(s.max, h.max.Load())
}

func (h *histogram) sum() *histogramSum {
	var s histogramSum
	s.add(h)
	return &s
}

func (s *histogramSum) percentiles() Percentiles {
	counts, n := &s.counts, s.n
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
				return min(time.Duration(upper(i)), p.Max)
			}
		}
		return p.Max
	}
	p.P50, p.P90, p.P99 = q(0.50), q(0.90), q(0.99)
	return p
}
