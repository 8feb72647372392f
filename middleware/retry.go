package middleware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/jobinfo"
)

// Retry's defaults.
const (
	DefaultMaxAttempts     = 3
	DefaultInitialInterval = 100 * time.Millisecond
	DefaultMaxInterval     = 10 * time.Second
	DefaultMultiplier      = 2.0
	DefaultJitter          = 0.5
	DefaultMaxRetryAfter   = time.Minute
)

// A RetryOption configures Retry.
type RetryOption func(*retryConfig) error

type retryConfig struct {
	attempts      int
	initial, max  time.Duration
	multiplier    float64
	jitter        float64
	maxRetryAfter time.Duration
	retryable     func(error) bool
	onRetry       func(ctx context.Context, err error, wait time.Duration)
	sleep         func(ctx context.Context, d time.Duration) error
	rand          func() float64
}

// WithMaxAttempts sets how many times Retry calls the handler for one job,
// the first call included; n ≥ 1. Default DefaultMaxAttempts.
func WithMaxAttempts(n int) RetryOption {
	return func(c *retryConfig) error {
		if n < 1 {
			return fmt.Errorf("middleware: WithMaxAttempts: must be at least 1, got %d", n)
		}
		c.attempts = n
		return nil
	}
}

// WithBackoff sets the exponential backoff: the wait after the first
// failure is about initial, and each later wait grows by the multiplier up
// to max (before jitter). 0 < initial ≤ max. Defaults DefaultInitialInterval
// and DefaultMaxInterval.
func WithBackoff(initial, max time.Duration) RetryOption {
	return func(c *retryConfig) error {
		if initial <= 0 || max < initial {
			return fmt.Errorf("middleware: WithBackoff: want 0 < initial ≤ max, got initial %v, max %v", initial, max)
		}
		c.initial, c.max = initial, max
		return nil
	}
}

// WithMultiplier sets the factor by which the backoff grows after each
// failure; m ≥ 1 (1 keeps it constant). Default DefaultMultiplier.
func WithMultiplier(m float64) RetryOption {
	return func(c *retryConfig) error {
		if !(m >= 1) || math.IsInf(m, 0) {
			return fmt.Errorf("middleware: WithMultiplier: must be finite and at least 1, got %v", m)
		}
		c.multiplier = m
		return nil
	}
}

// WithJitter sets the randomization factor f in [0, 1]: each wait is drawn
// uniformly from [(1−f)×d, (1+f)×d], d being the exponential interval, so
// that clients failing together do not retry together. 0 disables jitter.
// Default DefaultJitter.
func WithJitter(f float64) RetryOption {
	return func(c *retryConfig) error {
		if !(f >= 0 && f <= 1) {
			return fmt.Errorf("middleware: WithJitter: must be in [0, 1], got %v", f)
		}
		c.jitter = f
		return nil
	}
}

// WithRetryIf sets the predicate that says whether an error is worth
// another attempt. It is called only while attempts remain and the job's
// context is alive, and must be safe for concurrent use. The default,
// DefaultRetryable, retries everything but Permanent errors and bucket
// errors that no retry can fix.
func WithRetryIf(retryable func(error) bool) RetryOption {
	return func(c *retryConfig) error {
		if retryable == nil {
			return errors.New("middleware: WithRetryIf: nil predicate")
		}
		c.retryable = retryable
		return nil
	}
}

// WithMaxRetryAfter sets the longest retry-after Retry waits for itself,
// d ≥ 0. An error asking for longer is returned at once, as it is, so that
// it still carries its retry-after: a dispatcher then pauses the key in its
// backend for every process and requeues the job, without holding a worker.
// 0 hands every retry-after back this way, which is the right setting inside
// a dispatcher when other jobs share the key. Default DefaultMaxRetryAfter.
func WithMaxRetryAfter(d time.Duration) RetryOption {
	return func(c *retryConfig) error {
		if d < 0 {
			return fmt.Errorf("middleware: WithMaxRetryAfter: must not be negative, got %v", d)
		}
		c.maxRetryAfter = d
		return nil
	}
}

// WithOnRetry sets a function called before each wait with the error of
// the attempt that failed and the wait before the next one; ctx carries
// that attempt's number (package jobinfo). Use it to count retries. It
// must be safe for concurrent use.
func WithOnRetry(f func(ctx context.Context, err error, wait time.Duration)) RetryOption {
	return func(c *retryConfig) error {
		if f == nil {
			return errors.New("middleware: WithOnRetry: nil function")
		}
		c.onRetry = f
		return nil
	}
}

// WithSleep replaces how Retry waits between attempts, for tests: sleep
// must return nil after d, or the context's error (or cause) as soon as ctx
// ends. The default uses a timer.
func WithSleep(sleep func(ctx context.Context, d time.Duration) error) RetryOption {
	return func(c *retryConfig) error {
		if sleep == nil {
			return errors.New("middleware: WithSleep: nil function")
		}
		c.sleep = sleep
		return nil
	}
}

// WithRand replaces the source of jitter, for tests: rand returns a number
// in [0, 1) (values outside are clamped). It must be safe for concurrent
// use. The default is math/rand/v2's Float64.
func WithRand(rand func() float64) RetryOption {
	return func(c *retryConfig) error {
		if rand == nil {
			return errors.New("middleware: WithRand: nil function")
		}
		c.rand = rand
		return nil
	}
}

// DefaultRetryable is Retry's default predicate. It reports false for
// errors that another attempt cannot fix: Permanent errors, and the bucket
// errors for impossible requests, invalid limits or costs, empty keys and
// admissions beyond the context's deadline (*bucket.WaitError).
// It reports true for everything else, retry-after errors included, and
// context errors too: Retry stops by itself once the job's context has
// ended, so a context error it sees while the job's context lives is the
// attempt's own (a Timeout of one attempt, an http.Client's Timeout), which
// another attempt may not meet.
func DefaultRetryable(err error) bool {
	switch {
	case errors.As(err, new(*bucket.WaitError)):
		return false // the next admission is later still
	case errors.Is(err, ErrPermanent),
		errors.Is(err, bucket.ErrImpossible),
		errors.Is(err, bucket.ErrInvalidLimit),
		errors.Is(err, bucket.ErrInvalidCost),
		errors.Is(err, bucket.ErrEmptyKey):
		return false
	}
	return true
}

// Retry returns a Middleware that calls the handler again when it fails
// with a retryable error, up to a number of attempts, waiting between
// attempts with exponential backoff and jitter (computed with
// github.com/cenkalti/backoff/v5). The defaults make 3 attempts, waiting
// about 100ms and then 200ms, each ±50%.
//
// An error that carries a retry-after (RetryAfter) is retried no sooner
// than it asks: the wait is the larger of the backoff and the retry-after,
// never less than the server asked. A retry-after longer than
// WithMaxRetryAfter allows is returned at once, unchanged, and so is one
// that would end after the context's deadline: a dispatcher can still
// pause the key with it.
//
// Each attempt's context carries the job's attempt (package jobinfo),
// one more per retry, starting from the one Retry receives, or 1 if there
// is none. When the context ends during a wait, Retry stops waiting at
// once and returns an error that matches the context's cause
// (context.Cause: its error, unless it was given another) and names the
// last handler error (without wrapping it, so a cancelled job never looks
// retryable); a handler error that comes back after the context ended is
// returned unchanged. It does not start a wait that would end after the
// context's deadline. When the attempts run out, or the deadline is too
// near, it returns the last error wrapped with the number of attempts
// (errors.Is and errors.As still see it); a non-retryable error is
// returned unchanged. Under Wrap, the result is always the last attempt's.
//
// Retry waits in the caller's goroutine: inside a dispatcher, the job holds
// its worker while it waits. It panics if an option is nil, or invalid
// (with the option's message): both are programming errors.
func Retry(opts ...RetryOption) Middleware {
	c := retryConfig{
		attempts:      DefaultMaxAttempts,
		initial:       DefaultInitialInterval,
		max:           DefaultMaxInterval,
		multiplier:    DefaultMultiplier,
		jitter:        DefaultJitter,
		maxRetryAfter: DefaultMaxRetryAfter,
		retryable:     DefaultRetryable,
		sleep:         sleep,
		rand:          rand.Float64,
	}
	for i, opt := range opts {
		if opt == nil {
			panic(fmt.Sprintf("middleware: Retry: option %d is nil", i))
		}
		if err := opt(&c); err != nil {
			panic(err.Error())
		}
	}
	return func(next Next) Next {
		return func(ctx context.Context) error {
			return retry(ctx, &c, next)
		}
	}
}

func retry(ctx context.Context, c *retryConfig, next Next) error {
	info, ok := jobinfo.FromContext(ctx)
	if !ok {
		info.Attempt = 1
	}
	// A Logging outside learns the attempts from this Retry alone: those
	// below (nested, or run in parallel by the handler) do not see it.
	rec, _ := ctx.Value(logRecordKey{}).(*logRecord)
	if rec != nil {
		ctx = context.WithValue(ctx, logRecordKey{}, nil)
	}
	actx := ctx
	if !ok || rec != nil {
		actx = jobinfo.NewContext(ctx, info)
	}
	var b *backoff.ExponentialBackOff
	for n := 1; ; n++ {
		if rec != nil {
			rec.attempt.Store(int64(info.Attempt))
		}
		err := next(actx)
		if err == nil || ctx.Err() != nil || !c.retryable(err) {
			return err
		}
		if n >= c.attempts {
			if n == 1 {
				return err
			}
			return fmt.Errorf("middleware: gave up after %d attempts: %w", n, err)
		}
		if b == nil {
			// The library's own jitter draws from the global source; keep
			// it at 0 and jitter here with c.rand, which tests can replace.
			b = &backoff.ExponentialBackOff{
				InitialInterval: c.initial,
				Multiplier:      c.multiplier,
				MaxInterval:     c.max,
			}
			b.Reset()
		}
		wait := c.jittered(b.NextBackOff())
		ra, hasRA := RetryAfter(err)
		if hasRA {
			wait = max(wait, ra)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			if hasRA {
				return err
			}
			return fmt.Errorf("middleware: gave up after %d attempts, the next would start after the context's deadline: %w", n, err)
		}
		if hasRA && ra > c.maxRetryAfter {
			return err
		}
		if c.onRetry != nil {
			c.onRetry(actx, err, wait)
		}
		if serr := c.sleep(ctx, wait); serr != nil {
			return fmt.Errorf("middleware: retry stopped after %d attempts (last error: %v): %w", n, err, serr)
		}
		info.Attempt++
		actx = jobinfo.NewContext(ctx, info)
	}
}

// jittered returns d scaled by a random factor in [1−jitter, 1+jitter].
func (c *retryConfig) jittered(d time.Duration) time.Duration {
	if c.jitter == 0 {
		return d
	}
	r := c.rand()
	if !(r >= 0) { // also catches NaN
		r = 0
	}
	r = min(r, 1)
	f := float64(d) * (1 - c.jitter + 2*c.jitter*r)
	const most = 1 << 62
	if f >= most {
		return most
	}
	return time.Duration(f)
}

// sleep waits for d or until ctx ends, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
