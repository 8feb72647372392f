package bucket

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Errors of limits that cap work in flight (Limit.Inflight).
var (
	// ErrNoLease is returned by Allow, Wait and Reserve for a key whose
	// limit caps its work in flight: only Acquire, which returns a Lease
	// to release, may admit it.
	ErrNoLease = driver.ErrNoLease
	// ErrNoLeases is returned for a capped limit whose backend keeps no
	// leases (not a driver.LeaseBackend).
	ErrNoLeases = driver.ErrNoLeases
)

// DefaultLeaseTTL is how long a lease outlives a holder that stopped
// renewing it (a process killed): WithLeaseTTL changes it.
const DefaultLeaseTTL = driver.DefaultLeaseTTL

// atCapPoll bounds how long Acquire waits at a key's cap before asking
// the backend again: a lease released by another process is seen within
// it. Releases in this process wake their key's waiters at once.
const atCapPoll = 50 * time.Millisecond

// WithLeaseTTL sets the time to live of the leases Acquire takes, from
// driver.MinLeaseTTL on; default DefaultLeaseTTL. A Lease is renewed every
// third of it while held, so the leases of a holder that died come back
// within it.
func WithLeaseTTL(d time.Duration) Option {
	return func(l *Limiter) error {
		if err := driver.CheckRenew(d); err != nil {
			return fmt.Errorf("bucket: WithLeaseTTL: %w", err)
		}
		l.leaseTTL = d
		return nil
	}
}

// Acquire blocks until n units of key may pass and, if key's limit caps
// its work in flight (Limit.Inflight), one of its leases is free, and
// takes it: at most Inflight Leases of a key are held at once, across
// every process sharing the backend, and the rate and the cap are
// decided together. The Limiter renews the lease while it is held, from
// a goroutine of the Lease's own; Release it when the work ends. If ctx
// ends first nothing is kept and ctx's error is returned; a rate slot
// beyond ctx's deadline returns a *WaitError at once. Waiting at the cap
// costs a backend call at most every 50ms, and a Release in this process
// wakes its key's waiters at once. Without a cap, Acquire is WaitN and
// the Lease holds nothing.
func (l *Limiter) Acquire(ctx context.Context, key string, n int) (*Lease, error) {
	lim := l.Limit(key)
	if lim.unlimited || lim.Inflight == 0 {
		if err := l.waitN(ctx, key, n, lim); err != nil {
			return nil, err
		}
		return &Lease{}, nil
	}
	lb, ok := l.backend.(driver.LeaseBackend)
	if !ok {
		return nil, fmt.Errorf("%w: key %q, limit %v", ErrNoLeases, key, lim)
	}
	req := driver.Request{Key: key, Limit: lim.driver(), Cost: int64(n), Lease: driver.NewLeaseID(), LeaseTTL: l.leaseTTL}
	ref := []driver.LeaseRef{{Key: key, ID: req.Lease}}
	l.waiterIn(key)
	defer l.waiterOut(key)
	poll := time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dl, hasDeadline := ctx.Deadline()
		req.MaxWait = MaxDuration
		if hasDeadline {
			req.MaxWait = time.Until(dl)
		}
		woken := l.waiting(key) // before asking: a release after the answer still wakes us
		d, err := lb.Admit(ctx, req)
		if err != nil {
			// The backend may have admitted it before the error (a
			// timeout after the script ran): the lease must not stay.
			lb.Release(context.WithoutCancel(ctx), ref)
			return nil, err
		}
		if d.Allowed {
			// Renewed from now: a wait for the rate longer than the TTL
			// must not cost the lease.
			ls := l.held(lb, req)
			if err := sleep(ctx, d.Wait); err != nil {
				ls.stopRenewing()
				lb.Refund(context.WithoutCancel(ctx), req, d)
				l.wake(key)
				return nil, err
			}
			return ls, nil
		}
		if !d.AtCap {
			return nil, &WaitError{Key: key, Delay: d.Wait}
		}
		t := time.NewTimer(min(poll, d.Wait))
		select {
		case <-woken:
		case <-t.C:
			poll = min(2*poll, atCapPoll)
		case <-ctx.Done():
		}
		t.Stop()
	}
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A waitList is the Acquire calls waiting at a key's cap: its channel is
// closed at the next release of one of the key's leases in this Limiter.
type waitList struct {
	ch chan struct{}
	n  int // Acquire calls of the key under way
}

// waiterIn and waiterOut count an Acquire of key in and out: the key's
// entry goes when the last leaves, so that keys no one waits for cost
// nothing.
func (l *Limiter) waiterIn(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released == nil {
		l.released = make(map[string]*waitList)
	}
	w := l.released[key]
	if w == nil {
		w = &waitList{ch: make(chan struct{})}
		l.released[key] = w
	}
	w.n++
}

func (l *Limiter) waiterOut(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.released[key]; w != nil {
		if w.n--; w.n == 0 {
			delete(l.released, key)
		}
	}
}

// waiting returns a channel closed at the next release of one of key's
// leases; the caller is counted in (waiterIn).
func (l *Limiter) waiting(key string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.released[key].ch
}

// wake wakes the Acquire calls waiting at key's cap.
func (l *Limiter) wake(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w := l.released[key]; w != nil {
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// A Lease is one of a key's places in flight, taken by Limiter.Acquire
// and renewed by its own goroutine until Release. Its methods are safe
// for concurrent use.
type Lease struct {
	l    *Limiter
	lb   driver.LeaseBackend
	ref  driver.LeaseRef
	ttl  time.Duration
	once sync.Once
	stop chan struct{} // closed by Release
	done chan struct{} // closed when the renewer has returned
	lost chan struct{} // closed when a renewal finds the lease gone
}

// held starts renewing the lease req took.
func (l *Limiter) held(lb driver.LeaseBackend, req driver.Request) *Lease {
	ttl := req.LeaseTTL
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	ls := &Lease{
		l: l, lb: lb, ttl: ttl,
		ref:  driver.LeaseRef{Key: req.Key, ID: req.Lease},
		stop: make(chan struct{}),
		done: make(chan struct{}),
		lost: make(chan struct{}),
	}
	go ls.renew()
	return ls
}

// renew renews the lease every third of its time to live until Release,
// or until a renewal finds it gone. A failed renewal is tried again at the
// next tick: the lease outlives it by two thirds of its time to live.
func (ls *Lease) renew() {
	defer close(ls.done)
	t := time.NewTicker(ls.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ls.stop:
			return
		case <-t.C:
		}
		lost, err := ls.lb.Renew(context.Background(), []driver.LeaseRef{ls.ref}, ls.ttl)
		if err == nil && len(lost) > 0 {
			close(ls.lost)
			return
		}
	}
}

// Lost returns a channel closed if a renewal found the lease gone: it
// expired (its holder stalled longer than its time to live, or the
// backend lost it), and another may hold the place now. Work under it
// should stop. For a Lease that holds nothing it is nil.
func (ls *Lease) Lost() <-chan struct{} { return ls.lost }

// Release gives the lease back and stops renewing it; a waiter at the
// key's cap in this process is woken at once. Releasing again, or a
// Lease that holds nothing, does nothing.
func (ls *Lease) Release(ctx context.Context) error {
	if ls.l == nil {
		return nil
	}
	var err error
	ls.once.Do(func() {
		ls.stopRenewing()
		err = ls.lb.Release(ctx, []driver.LeaseRef{ls.ref})
		ls.l.wake(ls.ref.Key)
	})
	return err
}

// stopRenewing stops the renewer and waits for it.
func (ls *Lease) stopRenewing() {
	select {
	case <-ls.stop:
	default:
		close(ls.stop)
	}
	<-ls.done
}

// errNoLeaseFor reports a capped key asked of Allow, Wait or Reserve.
func errNoLeaseFor(key string, lim Limit) error {
	return fmt.Errorf("%w: key %q has limit %v: use Acquire, and Release its Lease", ErrNoLease, key, lim)
}
