package middleware

import (
	"context"
	"errors"
	"fmt"

	"github.com/leakybucket/leakybucket/bucket"
)

// RateLimit returns a Middleware that makes each call of the handler wait
// for one unit of its job's bucket, key(job), in lim: the decorator for
// code that does not use a dispatcher. The wait blocks the caller and
// honours the context: if it ends first, the booking is given back and the
// handler is not called; if the admission would come after the context's
// deadline, the call fails at once with a *bucket.WaitError. Errors from
// the limiter are returned wrapped, naming the key, and the handler is not
// called. Its cost is one Limiter.Wait: a backend round trip plus the wait.
//
// A dispatcher admits jobs through its own limiter before they take a
// worker; do not add RateLimit to a dispatcher's handler for the same
// limiter, or each job is charged twice.
func RateLimit[T, R any](lim *bucket.Limiter, key func(T) string) (Middleware[T, R], error) {
	if lim == nil {
		return nil, errors.New("middleware: RateLimit: nil limiter")
	}
	if key == nil {
		return nil, errors.New("middleware: RateLimit: nil key function")
	}
	return func(next Handler[T, R]) Handler[T, R] {
		mustHandler("RateLimit", next)
		return func(ctx context.Context, job T) (R, error) {
			k := key(job)
			if err := lim.Wait(ctx, k); err != nil {
				var zero R
				return zero, fmt.Errorf("middleware: rate limit of key %q: %w", k, err)
			}
			return next(ctx, job)
		}
	}, nil
}
