package main

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/leakybucket/leakybucket/dispatcher"
)

// A tally adds up what the sync did, reported by this process or by its
// workers. It is the recorder of the parent; it is safe for concurrent use.
type tally struct {
	start time.Time
	jobs  int // per tenant
	burst int

	mu      sync.Mutex
	tenants map[string]*tenantTally
	order   []string
	errs    []string // distinct final errors, the first few
	procs   int      // dispatchers that reported their figures
}

type tenantTally struct {
	requests, rejected             int64
	ok, failed, cancelled, retries int64
	throttled, late                int64
	first, last                    time.Duration   // of sends
	sends, rejects                 []time.Duration // since start, in the order reported: requests sent, and those answered 429
	waitP50, waitP99               time.Duration   // the largest any process reported
	// With -learn: the rates its buckets applied, sampled, in the order
	// reported (every process's); the latest of them by time; and the
	// interval the last dispatcher to finish applied last.
	samples  []learnedSample
	latest   learnedSample
	interval time.Duration
}

// A learnedSample is the rate a tenant's bucket applied at a time.
type learnedSample struct {
	at   time.Duration // since start
	rate float64       // requests/s
}

const maxErrors = 5

func newTally(cfg *config) *tally {
	t := &tally{start: time.Now(), jobs: cfg.jobs, burst: cfg.burst, tenants: make(map[string]*tenantTally)}
	for _, name := range cfg.tenantNames() {
		t.tenant(name)
	}
	return t
}

// tenant returns name's figures; t.mu is held.
func (t *tally) tenant(name string) *tenantTally {
	tt := t.tenants[name]
	if tt == nil {
		tt = new(tenantTally)
		t.tenants[name] = tt
		t.order = append(t.order, name)
	}
	return tt
}

func (t *tally) request(tenant string, sent time.Time, status int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tt := t.tenant(tenant)
	tt.requests++
	at := sent.Sub(t.start)
	if len(tt.sends) == 0 || at < tt.first {
		tt.first = at
	}
	tt.last = max(tt.last, at)
	tt.sends = append(tt.sends, at)
	if status == http.StatusTooManyRequests {
		tt.rejected++
		tt.rejects = append(tt.rejects, at)
	}
}

func (t *tally) done(tenant string, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	t.outcome(tenant, classify(err), msg)
}

// Job results.
const (
	resultOK        = "ok"
	resultFailed    = "failed"
	resultCancelled = "cancelled" // not synced because of an interrupt
)

// classify names a job's result from its error.
func classify(err error) string {
	switch {
	case err == nil:
		return resultOK
	case errors.Is(err, dispatcher.ErrClosed) || errors.Is(err, context.Canceled):
		return resultCancelled
	}
	return resultFailed
}

// outcome counts one job's result; msg is its error, if any.
func (t *tally) outcome(tenant, result, msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tt := t.tenant(tenant)
	switch result {
	case resultOK:
		tt.ok++
	case resultCancelled:
		tt.cancelled++
	default:
		tt.failed++
		t.noteError(msg)
	}
}

func (t *tally) noteError(msg string) {
	for _, e := range t.errs {
		if e == msg {
			return
		}
	}
	if len(t.errs) < maxErrors {
		t.errs = append(t.errs, msg)
	}
}

func (t *tally) learned(tenant string, at time.Time, interval time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tt := t.tenant(tenant)
	s := learnedSample{at.Sub(t.start), perSecond(interval)}
	tt.samples = append(tt.samples, s)
	if len(tt.samples) == 1 || s.at >= tt.latest.at {
		tt.latest = s
	}
}

func (t *tally) finish(keys map[string]keyFigures) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.procs++
	for name, k := range keys {
		tt := t.tenant(name)
		tt.retries += k.Retries
		tt.throttled += k.Throttled
		tt.late += k.Late
		tt.waitP50 = max(tt.waitP50, k.WaitP50)
		tt.waitP99 = max(tt.waitP99, k.WaitP99)
		if k.Interval > 0 {
			tt.interval = k.Interval
		}
	}
}

// lost counts jobs that never reported an outcome (a worker process died)
// as failed.
func (t *tally) lost(why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tt := range t.tenants {
		if n := int64(t.jobs) - tt.ok - tt.failed - tt.cancelled; n > 0 {
			tt.failed += n
			t.noteError(why)
		}
	}
}

// A progressSnapshot is one tenant's progress so far.
type progressSnapshot struct {
	name     string
	done     int64 // jobs that succeeded or failed (not those an interrupt cancelled)
	rejected int64
	rate     float64 // requests sent in the last second (per second of the run, if shorter)
	learned  float64 // -learn: the rate its bucket applied last sampled, 0 if none yet
}

// lateAnswer is how much later than the sends after it a request's answer
// may come for the progress rate to count it.
const lateAnswer = 10 * time.Second

func (t *tally) progress() []progressSnapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Since(t.start)
	span := min(now, time.Second)
	out := make([]progressSnapshot, 0, len(t.order))
	for _, name := range t.order {
		tt := t.tenants[name]
		// Sends are recorded as their answers come, so a slow answer
		// puts an older send after newer ones: look a little further
		// back than the second.
		recent := 0
		for i := len(tt.sends) - 1; i >= 0 && tt.sends[i] > now-span-lateAnswer; i-- {
			if tt.sends[i] > now-span {
				recent++
			}
		}
		rate := 0.0
		if span > 0 {
			rate = float64(recent) / span.Seconds()
		}
		out = append(out, progressSnapshot{name, tt.ok + tt.failed, tt.rejected, rate, tt.latest.rate})
	}
	return out
}
