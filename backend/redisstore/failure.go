package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/redis/go-redis/v9"
)

// ErrUnavailable matches every error that reports Redis as unreachable or
// unable to serve (a network error, a timeout, LOADING, CLUSTERDOWN,
// READONLY, OOM...). It wraps the cause. Errors Redis returns for one key
// (a foreign value of another type under the prefix) do not match it.
var ErrUnavailable = errors.New("redisstore: redis unavailable")

// A FailurePolicy says what a Store answers while Redis is unavailable.
type FailurePolicy int

const (
	// FailClosed returns an error matching ErrUnavailable and admits
	// nothing. The caller (a dispatcher) retries later.
	FailClosed FailurePolicy = iota
	// FailOpen admits every request at once, without limit.
	FailOpen
	// FailLocal decides with an in-process bucket per key (memstore) with
	// the same limit until Redis answers again. Each process then admits
	// up to the limit on its own; the local buckets know nothing of what
	// Redis admitted before the failure, nor Redis of what they admitted,
	// so a key can pass its burst and quotas again once Redis is back.
	FailLocal
)

func (p FailurePolicy) String() string {
	switch p {
	case FailClosed:
		return "FailClosed"
	case FailOpen:
		return "FailOpen"
	case FailLocal:
		return "FailLocal"
	}
	return fmt.Sprintf("FailurePolicy(%d)", int(p))
}

// ask reports whether to send a call to Redis: always while it answers;
// after a failure, not until RetryInterval has passed, and then for one
// probing call at a time.
func (s *Store) ask() (ask, probe bool) {
	until := s.downUntil.Load()
	if until == 0 || s.retry < 0 {
		return true, false
	}
	if time.Now().UnixNano() < until {
		return false, false
	}
	if s.probing.CompareAndSwap(false, true) {
		return true, true
	}
	return false, false
}

// settle updates what the Store knows of Redis after a call that ended
// with err: Redis's answer or failure, or, from the batcher, a caller's
// ctx error or ErrClosed, which say nothing about Redis. Those are told
// apart by identity: round trips never depend on a caller's ctx, and a
// network error may match context.DeadlineExceeded (net's dial timeout
// does).
func (s *Store) settle(err error, probe bool) {
	switch {
	case err == nil || !isUnavailable(err):
		// Redis answered, perhaps with an error about this key.
		if s.downUntil.Load() != 0 {
			s.downUntil.Store(0)
		}
	case err != context.Canceled && err != context.DeadlineExceeded && err != driver.ErrClosed:
		e := err
		s.lastErr.Store(&e)
		s.downUntil.Store(time.Now().Add(s.retry).UnixNano())
	}
	if probe {
		s.probing.Store(false)
	}
}

// errAnswer answers an admission that failed with err: ctx's error if ctx
// ended, the failure policy's answer if Redis is unavailable, and the
// error itself otherwise.
func (s *Store) errAnswer(ctx context.Context, req driver.Request, err error) (driver.Decision, error) {
	switch {
	case ctx.Err() != nil:
		return driver.Decision{}, ctx.Err()
	case errors.Is(err, driver.ErrClosed):
		return driver.Decision{}, err
	case !isUnavailable(err):
		return driver.Decision{}, fmt.Errorf("redisstore: key %q: %w", req.Key, err)
	}
	return s.fallback(ctx, req, err)
}

// fallback answers req by the failure policy; cause is the failure, or nil
// if Redis was not asked.
func (s *Store) fallback(ctx context.Context, req driver.Request, cause error) (driver.Decision, error) {
	switch s.policy {
	case FailOpen:
		return unlimited(), nil
	case FailLocal:
		d, err := s.local.Admit(ctx, req)
		return s.toLocal(d), err
	}
	return driver.Decision{}, s.unavailable(cause)
}

// unlimited is the decision for a request Redis is not asked about, which
// admits it at once: on the host's clock, Redis's nearest.
func unlimited() driver.Decision {
	return driver.Decision{Allowed: true, Now: time.Now().UnixNano()}
}

func (s *Store) unavailable(cause error) error {
	if cause == nil {
		if p := s.lastErr.Load(); p != nil {
			cause = *p
		} else {
			return ErrUnavailable
		}
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, cause)
}

// toLocal turns a decision of the local fallback into one of the Store:
// its clock is moved to Unix time, like Redis's, and its booking negated
// so that Refund knows where it belongs.
func (s *Store) toLocal(d driver.Decision) driver.Decision {
	d.Now += s.localBase
	d.Booking.TAT, d.Booking.Prev = -d.Booking.TAT, -d.Booking.Prev
	return d
}

func (s *Store) fromLocal(d driver.Decision) driver.Decision {
	d.Now -= s.localBase
	d.Booking.TAT, d.Booking.Prev = -d.Booking.TAT, -d.Booking.Prev
	return d
}

func isNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

// isUnavailable reports whether err says Redis cannot serve at all, as
// opposed to an error about one key or script.
func isUnavailable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true // network, timeout, pool, closed client
	}
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
		"BUSY", "NOREPLICAS", "OOM", "MISCONF", "NOSCRIPT", "MOVED", "ASK",
		"max number of clients"} { // HasErrorPrefix drops an "ERR " prefix
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}
