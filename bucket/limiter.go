// Package bucket defines rate limits — a leaky bucket per key, with
// rolling quotas — and the Limiter that callers wait on. A Limiter keeps
// its buckets in a backend: backend/memstore for one process, or
// backend/sqlitestore and backend/redisstore, whose buckets every process
// on the same file or server shares. What a backend implements is in
// package bucket/driver.
package bucket

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A Limiter admits units of work per key through a backend. Each key has
// its own bucket; the limit of a key is the default limit or, with
// WithKeyLimit, whatever the key function returns at each admission, so
// limits can change at runtime. A Limiter is safe for concurrent use; each
// call costs one backend call (a map lookup in memory, a round trip for
// SQLite or Redis), and a refund more when a Wait's ctx ends before its
// slot, except for Unlimited keys, which no backend sees.
type Limiter struct {
	backend  driver.Backend
	limit    Limit
	limitFor func(key string) Limit
	leaseTTL time.Duration // 0: driver.DefaultLeaseTTL

	mu       sync.Mutex
	released map[string]*waitList // by key: the Acquire calls waiting at its cap
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
func NewLimiter(b driver.Backend, lim Limit, opts ...Option) (*Limiter, error) {
	if b == nil {
		return nil, errors.New("bucket: NewLimiter: nil backend")
	}
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	if _, ok := b.(driver.LeaseBackend); lim.Inflight > 0 && !ok {
		return nil, fmt.Errorf("bucket: NewLimiter: limit %v: %w", lim, ErrNoLeases)
	}
	lim.Quotas = slices.Clone(lim.Quotas)
	l := &Limiter{backend: b, limit: lim}
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("bucket: NewLimiter: option %d is nil", i)
		}
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

// Backend returns the backend l keeps its buckets in. A dispatcher admits
// its jobs through it directly, in batches.
func (l *Limiter) Backend() driver.Backend { return l.backend }

// Allow reports whether one unit for key may pass now, charging it if so.
// It never blocks beyond the backend's round trip.
func (l *Limiter) Allow(ctx context.Context, key string) (bool, error) {
	return l.AllowN(ctx, key, 1)
}

// AllowN reports whether n units for key may pass now, charging them if so.
// A key whose limit caps its work in flight returns ErrNoLease: Acquire
// admits it. So do Wait, WaitN and Reserve.
func (l *Limiter) AllowN(ctx context.Context, key string, n int) (bool, error) {
	lim := l.Limit(key)
	if lim.unlimited {
		err := checkUnlimited(key, n)
		return err == nil, err
	}
	if lim.Inflight > 0 {
		return false, errNoLeaseFor(key, lim)
	}
	// Built in the call, as Reserve does: a request returned from a helper
	// costs a copy of its nine words on the hot path.
	d, err := l.backend.Admit(ctx, driver.Request{Key: key, Limit: lim.driver(), Cost: int64(n)})
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
	return l.waitN(ctx, key, n, l.Limit(key))
}

// waitN is WaitN under lim, key's limit.
func (l *Limiter) waitN(ctx context.Context, key string, n int, lim Limit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	maxWait := MaxDuration
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline {
		maxWait = time.Until(dl)
	}
	r, err := l.reserve(ctx, key, n, maxWait, lim)
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
	return l.reserve(ctx, key, n, maxWait, l.Limit(key))
}

// reserve is Reserve under lim, key's limit.
func (l *Limiter) reserve(ctx context.Context, key string, n int, maxWait time.Duration, lim Limit) (Reservation, error) {
	if lim.Inflight > 0 {
		return Reservation{}, errNoLeaseFor(key, lim)
	}
	if lim.unlimited {
		if err := checkUnlimited(key, n); err != nil {
			return Reservation{}, err
		}
		return Reservation{OK: true}, nil
	}
	req := driver.Request{Key: key, Limit: lim.driver(), Cost: int64(n), MaxWait: maxWait}
	d, err := l.backend.Admit(ctx, req)
	if err != nil {
		return Reservation{}, err
	}
	r := Reservation{OK: d.Allowed, Delay: d.Wait}
	if d.Allowed {
		r.l, r.req, r.d = l, req, d
	}
	return r, nil
}

// checkUnlimited reports what no backend is asked to check of a request
// under Unlimited: its key and cost.
func checkUnlimited(key string, n int) error {
	switch {
	case key == "":
		return ErrEmptyKey
	case n < 1:
		return fmt.Errorf("%w, got %d", ErrInvalidCost, n)
	}
	return nil
}

// Pause admits nothing for key during d, in every process sharing the
// backend: the backend measures d on its own clock from when it receives
// the call (Retry-After is a duration for that reason). A d ≤ 0 does
// nothing; a d above MaxDuration pauses for MaxDuration.
func (l *Limiter) Pause(ctx context.Context, key string, d time.Duration) error {
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
	req driver.Request
	d   driver.Decision
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
	return l.backend.Refund(ctx, r.req, r.d)
}
