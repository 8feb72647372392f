package sqlitestore

import (
	"context"
	"errors"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
)

// Admit implements driver.Backend. It blocks while other operations of the
// Store run, and for up to Options.BusyTimeout while other processes hold
// the file's write lock; ctx ends both waits. An invalid request fails
// without touching the file.
//
// Concurrent calls share transactions: a call that finds no transaction of
// admissions under way runs one; calls that arrive meanwhile queue, free
// to leave while they wait if their ctx ends, and the first of them still
// waiting runs the next transaction for all of them (up to maxCombined),
// deciding them in arrival order as AdmitBatch would. Alone, a call is one
// transaction; among many, it costs a fraction of one.
func (s *Store) Admit(ctx context.Context, req driver.Request) (driver.Decision, error) {
	if s.closed.Load() {
		return driver.Decision{}, driver.ErrClosed
	}
	if err := req.Validate(); err != nil {
		return driver.Decision{}, err
	}
	return s.admits.Do(ctx, req)
}

// maxCombined is the most Admit calls one transaction decides.
const maxCombined = 256

// admitCalls decides the Admit calls of r in one transaction, under the
// context of the caller running it. The calls queued join once the write
// lock is held: while it is awaited they stay in the queue, free to leave
// it if their context ends.
func (s *Store) admitCalls(ctx context.Context, r *coalesce.Round[driver.Request, driver.Decision]) {
	batch := s.combined[:0]
	began := false
	err := s.txn(ctx, "admit", func(host int64) error {
		began = true
		r.Take()
		for _, c := range r.Calls {
			batch = append(batch, driver.Admission{Request: c.Req})
		}
		return s.decide(host, batch)
	})
	if !began && err != nil && !(ctx.Err() != nil && errors.Is(err, ctx.Err())) {
		// The transaction could not begin (the lock stayed taken, the file
		// failed): the calls queued meanwhile would meet the same.
		r.Take()
	}
	for i, c := range r.Calls {
		c.Ans, c.Err = driver.Decision{}, err // rolled back: nothing was admitted
		if err == nil {
			c.Ans, c.Err = batch[i].Decision, batch[i].Err
		}
	}
	clear(batch) // keep no caller's limits alive
	s.combined = batch[:0]
}
