// Package middleware wraps job handlers with retries, timeouts, logging and
// rate limiting, and turns HTTP rate-limit answers into errors that carry a
// retry-after.
//
// A Middleware takes a Handler and returns one that does something around
// it. Chain composes middleware so that its first element is the outermost,
// as in net/http and alice: Chain(m1, m2)(h) is m1(m2(h)), so m1 sees the
// job first and the result last. The order matters, and this one suits most
// handlers that call a rate-limited service:
//
//	Chain(logging, retry, rateLimit, timeout)(call)
//
// logs one record per job (not per attempt), retries the whole of an
// attempt, waits for the key's bucket before every attempt, and gives the
// call, not the bucket wait, its deadline. Put logging inside retry to log
// every attempt instead. Under a dispatcher, leave rateLimit out (the
// dispatcher admits jobs itself) and consider Retry with
// WithMaxRetryAfter(0), so that a server's retry-after pauses the key for
// every process instead of holding one worker; outside one, put Keyed
// first so that logs name the key.
//
// Costs, per job: Chain adds one function call per middleware and nothing
// when the handler runs. Timeout allocates a context and a timer (about a
// microsecond). Logging reads the clock twice and writes one record (the
// slog handler's cost, typically one to a few microseconds). Retry allocates
// a little bookkeeping per job and a context value per retry, and holds the
// caller's goroutine (a dispatcher's worker) while it waits. RateLimit costs
// one Limiter.Wait: a backend round trip, plus the wait itself.
//
// Handlers and the middleware here are safe for concurrent use when the
// wrapped handler is; middleware keeps no state between jobs.
//
// Outside this package, a dispatcher reads the two things middleware and
// handlers say to it through errors and the context: a *RetryAfterError
// asks it to pause the job's key and requeue the job, and JobInfo tells
// handlers which key and attempt they are running.
package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A Handler processes one job.
type Handler[T, R any] func(ctx context.Context, job T) (R, error)

// A Middleware wraps a Handler in another.
type Middleware[T, R any] func(Handler[T, R]) Handler[T, R]

// Chain composes mws into one Middleware whose first element is the
// outermost: Chain(m1, m2)(h) is m1(m2(h)). Chain with no middleware returns
// the handler unchanged. Chain copies mws; it panics if one of them is nil,
// which is always a programming error (most often an ignored constructor
// error), and the returned Middleware panics on a nil handler.
func Chain[T, R any](mws ...Middleware[T, R]) Middleware[T, R] {
	for i, m := range mws {
		if m == nil {
			panic(fmt.Sprintf("middleware: Chain: middleware %d is nil", i))
		}
	}
	mws = append([]Middleware[T, R](nil), mws...)
	return func(h Handler[T, R]) Handler[T, R] {
		if h == nil {
			panic("middleware: Chain: nil handler")
		}
		for i := len(mws) - 1; i >= 0; i-- {
			h = mws[i](h)
		}
		return h
	}
}

// A RetryAfterError is a handler error that asks for the job to be retried
// no sooner than Delay from when the error was returned. A dispatcher
// pauses the job's key for Delay in its backend, for every process sharing
// it, and requeues the job; Retry waits at least Delay before its next
// attempt. FromResponse makes one from an HTTP 429 or 503.
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

// RetryAfter reports the delay carried by err or any error it wraps: the
// Delay of the first *RetryAfterError that errors.As finds, never negative.
func RetryAfter(err error) (time.Duration, bool) {
	var ra *RetryAfterError
	if !errors.As(err, &ra) {
		return 0, false
	}
	return max(ra.Delay, 0), true
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

// mustHandler panics if next is nil: wrapping a nil handler is always a
// programming error, better reported where it is made than at the first
// job.
func mustHandler[T, R any](name string, next Handler[T, R]) {
	if next == nil {
		panic("middleware: " + name + ": nil handler")
	}
}

// JobInfo describes the run of a job; it travels in the handler's context.
// A dispatcher sets Key and Attempt (1 for the first run, one more for each
// requeue); Retry adds one to Attempt for each retry it makes.
type JobInfo struct {
	Key     string
	Attempt int
}

type jobInfoKey struct{}

// WithJobInfo returns a copy of ctx that carries info.
func WithJobInfo(ctx context.Context, info JobInfo) context.Context {
	return context.WithValue(ctx, jobInfoKey{}, info)
}

// JobInfoFrom returns the JobInfo ctx carries, if any.
func JobInfoFrom(ctx context.Context) (JobInfo, bool) {
	info, ok := ctx.Value(jobInfoKey{}).(JobInfo)
	return info, ok
}

// Keyed returns a Middleware that gives each job's context a JobInfo with
// key(job) as its Key and Attempt 1, unless the context already carries a
// JobInfo (as under a dispatcher). It lets Logging and Retry report keys for
// code that does not use a dispatcher; put it outermost. key must be safe
// for concurrent use.
func Keyed[T, R any](key func(T) string) (Middleware[T, R], error) {
	if key == nil {
		return nil, errors.New("middleware: Keyed: nil key function")
	}
	return func(next Handler[T, R]) Handler[T, R] {
		mustHandler("Keyed", next)
		return func(ctx context.Context, job T) (R, error) {
			if _, ok := JobInfoFrom(ctx); !ok {
				ctx = WithJobInfo(ctx, JobInfo{Key: key(job), Attempt: 1})
			}
			return next(ctx, job)
		}
	}, nil
}
