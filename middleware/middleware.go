// Package middleware wraps job handlers with retries, timeouts, logging and
// rate limiting, and turns HTTP rate-limit answers into errors that carry a
// retry-after.
//
// A Middleware runs around one call of a handler: it is given next, which
// runs the rest of the chain and the handler, and returns what runs in its
// place. It sees the call's context and error, not the job or the result,
// so one Middleware serves handlers of every type and is built without
// type arguments. Wrap puts middleware around a handler; the first is the
// outermost, as in net/http and alice: Wrap(h, m1, m2) runs m1(m2(h)), so
// m1 sees the call first and its error last. The order matters, and this
// one suits most handlers that call a rate-limited service:
//
//	handler := middleware.Keyed(middleware.Wrap(fetch, logging, retry, rateLimit, timeout), key)
//
// Keyed gives each call its job's key; the chain logs one record per job
// (not per attempt), retries the whole of an attempt, waits for the key's
// bucket before every attempt, and gives the call, not the bucket wait,
// its deadline. Put logging inside retry to log every attempt instead.
// Under a dispatcher, leave Keyed and rateLimit out (the dispatcher puts
// the key in the context and admits jobs itself) and consider Retry with
// WithMaxRetryAfter(0), so that a server's retry-after pauses the key for
// every process instead of holding one worker.
//
// A dispatcher puts each job's key and attempt in its handler's context
// (package jobinfo); Logging reports them, RateLimit waits for the key's
// bucket, and Retry counts its attempts there. Code that calls a handler
// itself gives it a key with Keyed.
//
// Costs, per call: Wrap allocates a few small objects for the handler and
// a closure per middleware (tens of nanoseconds each). Timeout allocates
// a context and a timer. Logging reads the clock twice and allocates a
// context value, and writes one record when the logger's level lets it
// through (the slog handler's cost, typically one to a few microseconds).
// Retry allocates a context value per retry, and holds the caller's
// goroutine (a dispatcher's worker) while it waits. RateLimit costs one
// Limiter.Wait: a backend round trip, plus the wait itself, which blocks
// the caller.
//
// The middleware here keeps no state of its own between calls (RateLimit's
// is in its limiter) and is safe for concurrent use when the handler is.
// Constructors panic on arguments that are always a programming error (a
// nil logger or limiter, a timeout ≤ 0, an invalid Retry option), as
// net/http's ServeMux does on a nil handler.
package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/jobinfo"
)

// A Handler processes one job. It is the dispatcher's handler type: both
// name the same function type, so either package's handlers are the
// other's.
type Handler[T, R any] = func(ctx context.Context, job T) (R, error)

// A Next runs the rest of a chain for one call: the middleware inside,
// then the handler, whose error it returns (its result travels around the
// middleware, unseen). A Middleware may call it more than once, in turn
// (Retry does), but not concurrently.
type Next func(ctx context.Context) error

// A Middleware wraps a call of a handler: given next, it returns what runs
// in its place, usually something that calls next.
type Middleware func(next Next) Next

// Chain composes mws into one Middleware whose first element is the
// outermost: Chain(m1, m2)(next) is m1(m2(next)). Chain with no
// middleware returns one that changes nothing. Chain copies mws; it panics
// if one of them is nil, and the Middleware it returns panics if given a
// nil Next or if one of mws returns one.
func Chain(mws ...Middleware) Middleware {
	for i, m := range mws {
		if m == nil {
			panic(fmt.Sprintf("middleware: Chain: middleware %d is nil", i))
		}
	}
	mws = append([]Middleware(nil), mws...)
	return func(next Next) Next {
		if next == nil {
			panic("middleware: Chain: nil Next")
		}
		for i := len(mws) - 1; i >= 0; i-- {
			if next = mws[i](next); next == nil {
				panic(fmt.Sprintf("middleware: middleware %d returned a nil Next", i))
			}
		}
		return next
	}
}

// Wrap returns h with mws around each call, the first outermost:
// Wrap(h, m1, m2) runs m1, which runs m2, which runs h; Wrap(h) is h. The
// error the caller gets is the outermost middleware's, and the result is
// that of h's last call: a Retry that calls h three times returns the
// third call's result, and a middleware that returns without calling next
// leaves the zero R. The chain is built around each call (see Costs in the
// package doc). Wrap panics if h or one of mws is nil; a middleware that
// returns a nil Next panics at the first call. The handler returned is
// safe for concurrent use when h and mws are.
func Wrap[T, R any](h Handler[T, R], mws ...Middleware) Handler[T, R] {
	if h == nil {
		panic("middleware: Wrap: nil handler")
	}
	for i, m := range mws {
		if m == nil {
			panic(fmt.Sprintf("middleware: Wrap: middleware %d is nil", i))
		}
	}
	if len(mws) == 0 {
		return h
	}
	chain := Chain(mws...)
	return func(ctx context.Context, job T) (R, error) {
		var r R
		err := chain(func(ctx context.Context) error {
			var err error
			r, err = h(ctx, job)
			return err
		})(ctx)
		return r, err
	}
}

// Keyed returns h with each call's context given the key key(job) and
// attempt 1 (package jobinfo), unless the context carries jobinfo already
// (as under a dispatcher, or inside a Retry). It lets Logging, RateLimit
// and Retry know the key in code that calls handlers itself; put it
// outermost, around Wrap, so that they all see the key. It panics if h or
// key is nil; key must be safe for concurrent use when h is called
// concurrently.
func Keyed[T, R any](h Handler[T, R], key func(T) string) Handler[T, R] {
	if h == nil || key == nil {
		panic("middleware: Keyed: nil handler or key function")
	}
	return func(ctx context.Context, job T) (R, error) {
		if _, ok := jobinfo.FromContext(ctx); !ok {
			ctx = jobinfo.NewContext(ctx, jobinfo.Info{Key: key(job), Attempt: 1})
		}
		return h(ctx, job)
	}
}

// A RetryAfterError is a handler error that asks for the job to be retried
// no sooner than Delay from when the error was returned. A dispatcher
// pauses the job's key for Delay in its backend, for every process sharing
// it, and requeues the job; Retry waits at least Delay before its next
// attempt. FromResponse makes one from an HTTP 429 or 503. Any error type
// with a RetryAfter method asks the same of both.
type RetryAfterError struct {
	Delay time.Duration // how long to wait; a negative Delay means 0
	Err   error         // what went wrong; may be nil
}

// Error returns Err's message followed by the delay, or just the delay if
// Err is nil.
func (e *RetryAfterError) Error() string {
	if e.Err == nil {
		return "middleware: retry after " + e.Delay.String()
	}
	return e.Err.Error() + " (retry after " + e.Delay.String() + ")"
}

// Unwrap returns Err.
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns Delay, or 0 if it is negative.
func (e *RetryAfterError) RetryAfter() time.Duration { return max(e.Delay, 0) }

// RetryAfter reports the delay err asks for: that of the first error in
// its chain with a method RetryAfter() time.Duration (a *RetryAfterError,
// or any type of the caller's), as errors.As finds it, never negative.
func RetryAfter(err error) (time.Duration, bool) {
	var ra interface{ RetryAfter() time.Duration }
	if !errors.As(err, &ra) {
		return 0, false
	}
	return max(ra.RetryAfter(), 0), true
}

// ErrPermanent matches every error made by Permanent.
var ErrPermanent = errors.New("middleware: permanent error")

// Permanent marks err as not worth retrying: Retry's default predicate
// returns it at once. The result has err's message, unwraps to err, and
// matches ErrPermanent. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string        { return e.err.Error() }
func (e *permanentError) Unwrap() error        { return e.err }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }
