package netfault_test

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/failover"
)

// A watched store keeps a Dispatcher's admissions, less those it gives
// back, by who decided them: the server, or FailLocal's local buckets;
// it counts FailOpen's, which admit without limit. (The dispatcher cannot
// say who admitted which job.) It also times the first admission by the
// server after a moment (a fault's end).
type watched struct {
	driver.BatchBackend
	after atomic.Int64 // Unix ns
	first atomic.Int64 // Unix ns, when the answer came
	open  atomic.Int64

	mu     sync.Mutex
	server map[string][]admitted
	local  map[string][]admitted
}

// An admitted is an admission kept: its start, and its booking's TATs,
// those of the local buckets negated back to their clock's.
type admitted struct {
	start     int64
	tat, prev int64
}

func watch(s driver.BatchBackend) *watched {
	return &watched{BatchBackend: s, server: map[string][]admitted{}, local: map[string][]admitted{}}
}

// byOrigin returns the map that keeps admissions decided as d was, and
// d as it keeps it; nil for FailOpen's and for refusals. The server's
// admissions carry its booking; FailOpen's none, the local buckets' a
// negated one.
func (w *watched) byOrigin(d driver.Decision) (map[string][]admitted, admitted) {
	b := d.Booking
	switch {
	case !d.Allowed || b.TAT == 0:
		return nil, admitted{}
	case failover.IsLocal(d):
		return w.local, admitted{d.Start(), -b.TAT, -b.Prev}
	}
	return w.server, admitted{d.Start(), b.TAT, b.Prev}
}

func (w *watched) AdmitBatch(ctx context.Context, batch []driver.Admission) {
	w.BatchBackend.AdmitBatch(ctx, batch)
	after := w.after.Load()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range batch {
		if a.Err != nil || !a.Decision.Allowed {
			continue
		}
		m, kept := w.byOrigin(a.Decision)
		if m == nil {
			w.open.Add(1)
			continue
		}
		m[a.Key] = append(m[a.Key], kept)
		if !failover.IsLocal(a.Decision) && after != 0 && a.Decision.Now > after {
			w.first.CompareAndSwap(0, time.Now().UnixNano())
		}
	}
}

// Refund forgets the admissions d gives back: d's booking may join
// consecutive admissions of a key (driver.Booking.Join), each one's TAT
// the next one's Prev. Their jobs do not run on them, whether the refund
// applies or not. An admission the dispatcher does not give back because
// it cannot come back (driver.Unbook) stays kept: it was charged.
func (w *watched) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	w.mu.Lock()
	if m, r := w.byOrigin(d); m != nil {
		// The admissions joined in d, latest first: the one with d's TAT,
		// then the one whose TAT is its Prev, back to d's Prev.
		as := m[req.Key]
		for tat, i := r.tat, len(as)-1; tat != r.prev && i >= 0; i-- {
			if as[i].tat == tat {
				tat = as[i].prev
				as = append(as[:i], as[i+1:]...)
			}
		}
		m[req.Key] = as
	}
	w.mu.Unlock()
	return w.BatchBackend.Refund(ctx, req, d)
}

// starts returns the starts of the admissions of key that m keeps.
func (w *watched) starts(m map[string][]admitted, key string) []backendtest.Start {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ss []backendtest.Start
	for _, a := range m[key] {
		ss = append(ss, backendtest.Start{At: a.start, Cost: 1})
	}
	return ss
}

// count returns how many admissions m keeps.
func (w *watched) count(m map[string][]admitted) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, as := range m {
		n += len(as)
	}
	return n
}
