// Package bucket defines rate limits (a leaky bucket with rolling quotas),
// their mathematics, the Backend interface that stores bucket state, and
// the Limiter that callers wait on.
package bucket

import (
	"context"
	"errors"
	"slices"
	"time"
)

// A Limiter admits units of work per key through a Backend. Each key has
// its own bucket; the limit of a key is the default limit or, with
// WithKeyLimit, whatever the key function returns at each admission, so
// limits can change at runtime. A Limiter is safe for concurrent use; its
// cost per call is the backend's (about 100 ns in memory, a round trip for
// SQLite or Redis).
type Limiter struct {
	backend  Backend
	limit    Limit
	limitFor func(key string) Limit
}

// An Option configures a Limiter.
type Option func(*Limiter) error

// WithKeyLimit sets the function that gives each key its limit. It is
// called at every admission, so it must be fast and safe for concurrent
// use; an invalid limit it returns fails that admission with a
// *LimitError. A key's bucket is kept as a time, not as units: when its
// rate or period changes to a slower one, what it had booked counts as
// fewer units, so up to a burst more can pass at once at the change.
func WithKeyLimit(f func(key string) Limit) Option {
	return func(l *Limiter) error {
		if f == nil {
			return errors.New("bucket: WithKeyLimit: nil function")
		}
		l.limitFor = f
		return nil
	}
}

// NewLimiter returns a Limiter that keeps its buckets in b with lim as the
// limit of every key (unless WithKeyLimit overrides it).
func NewLimiter(b Backend, lim Limit, opts ...Option) (*Limiter, error) {
	if b == nil {
		return nil, errors.New("bucket: NewLimiter: nil backend")
	}
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	lim.Quotas = slices.Clone(lim.Quotas)
	l := &Limiter{backend: b, limit: lim}
	for _, opt := range opts {
		if err := opt(l); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Limit returns key's current limit.
func (l *Limiter) Limit(key string) Limit {
	if l.limitFor != nil {
		return l.limitFor(key)
	}
	return l.limit
}

// Allow reports whether one unit for key may pass now, charging it if so.
// It never blocks beyond the backend's round trip.
func (l *Limiter) Allow(ctx context.Context, key string) (bool, error) {
	return l.AllowN(ctx, key, 1)
}

// AllowN reports whether n units for key may pass now, charging them if so.
func (l *Limiter) AllowN(ctx context.Context, key string, n int) (bool, error) {
	lim := l.limit
	if l.limitFor != nil {
		lim = l.limitFor(key)
	}
	if lim.unlimited {
		if err := (&Request{Key: key, Limit: lim, Cost: int64(n)}).Validate(); err != nil {
			return false, err
		}
		return true, nil
	}
	d, err := l.backend.Admit(ctx, Request{Key: key, Limit: lim, Cost: int64(n)})
	return d.Allowed && err == nil, err
}

// Wait blocks until one unit for key may pass, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, key string) error {
	return l.WaitN(ctx, key, 1)
}

// WaitN blocks until n units for key may pass, or ctx ends. It books the
// earliest slot, sleeps until it and returns; if ctx ends first the booking
// is refunded and ctx's error returned. If the slot lies beyond ctx's
// deadline WaitN returns a *WaitError at once, and a cost that can never
// pass returns a *CostError at once. A ctx that has ended already books
// nothing and returns its error.
func (l *Limiter) WaitN(ctx context.Context, key string, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	maxWait := MaxDuration
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		maxWait = time.Until(dl)
	}
	r, err := l.Reserve(ctx, key, n, maxWait)
	if err != nil {
		return err
	}
	if !r.OK {
		return &WaitError{Key: key, Delay: r.Delay}
	}
	if hasDeadline && r.Delay > time.Until(dl) {
		// The backend's round trip used up the margin: the slot is past
		// the deadline now.
		r.Cancel(context.WithoutCancel(ctx))
		return &WaitError{Key: key, Delay: r.Delay}
	}
	if r.Delay <= 0 {
		return nil
	}
	t := time.NewTimer(r.Delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel(context.WithoutCancel(ctx))
		return ctx.Err()
	}
}

// Reserve books n units for key to start within maxWait. The Reservation
// says whether it was booked and after what delay the caller may start (or,
// if not, when it would be admissible). Cancel it to give back a booking
// that will not be used.
func (l *Limiter) Reserve(ctx context.Context, key string, n int, maxWait time.Duration) (Reservation, error) {
	req := Request{Key: key, Limit: l.Limit(key), Cost: int64(n), MaxWait: maxWait}
	d, err := l.decide(ctx, req)
	if err != nil {
		return Reservation{}, err
	}
	r := Reservation{OK: d.Allowed, Delay: d.Wait}
	if d.Allowed {
		r.l, r.req, r.d = l, req, d
	}
	return r, nil
}

func (l *Limiter) decide(ctx context.Context, req Request) (Decision, error) {
	if req.Limit.unlimited {
		if err := req.Validate(); err != nil {
			return Decision{}, err
		}
		return Decision{Allowed: true}, nil
	}
	return l.backend.Admit(ctx, req)
}

// Admit decides a batch of requests in one backend call where the backend
// supports it (see BatchBackend), filling in each Decision or Err. Callers
// fill in each Request, typically with Limit(key) as its limit.
func (l *Limiter) Admit(ctx context.Context, batch []Admission) {
	if bb, ok := l.backend.(BatchBackend); ok {
		bb.AdmitBatch(ctx, batch)
		return
	}
	for i := range batch {
		a := &batch[i]
		a.Decision, a.Err = l.backend.Admit(ctx, a.Request)
	}
}

// Refund gives back an admission decided by Admit that will not be used.
func (l *Limiter) Refund(ctx context.Context, req Request, d Decision) error {
	if req.Limit.unlimited || !d.Allowed {
		return nil
	}
	return l.backend.Refund(ctx, req, d)
}

// Pause admits nothing for key before until, in every process sharing the
// backend. The backend measures the pause on its own clock from the moment
// it receives the call, so until is converted to a duration here.
func (l *Limiter) Pause(ctx context.Context, key string, until time.Time) error {
	return l.PauseFor(ctx, key, time.Until(until))
}

// PauseFor admits nothing for key during d, in every process sharing the
// backend. A d ≤ 0 does nothing.
func (l *Limiter) PauseFor(ctx context.Context, key string, d time.Duration) error {
	if key == "" {
		return ErrEmptyKey
	}
	if d <= 0 {
		return nil
	}
	return l.backend.Pause(ctx, key, min(d, MaxDuration))
}

// A Reservation is a booking made by Limiter.Reserve.
type Reservation struct {
	OK    bool          // the units were booked
	Delay time.Duration // if OK, when the caller may start; else when it could be booked

	l   *Limiter
	req Request
	d   Decision
}

// Cancel gives back a booking that will not be used, if no later booking
// of the key depends on it (its rate part and its quota units; otherwise
// nothing, which can only under-admit). Calling it more than once, or on a
// reservation that is not OK, does nothing.
func (r *Reservation) Cancel(ctx context.Context) error {
	if r.l == nil {
		return nil
	}
	l := r.l
	r.l = nil
	return l.Refund(ctx, r.req, r.d)
}
