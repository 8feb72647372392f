package middleware

import (
	"context"
	"fmt"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/jobinfo"
)

// RateLimit returns a Middleware that makes each call wait for one unit of
// its job's bucket in lim, the key being the one the call's context
// carries (package jobinfo: set by Keyed, or by a dispatcher): the
// decorator for code that does not use a dispatcher. The wait blocks the
// caller and honours the context: if it ends first, the booking is given
// back and the handler is not called; if the admission would come after
// the context's deadline, the call fails at once with a *bucket.WaitError.
// A call whose context carries no key, or an empty one, fails at once
// with an error matching bucket.ErrEmptyKey and the handler is not
// called; other errors from the limiter are returned wrapped, naming the
// key. Its cost is one Limiter.Wait: a backend round trip plus the wait.
// It is safe for concurrent use, as the Limiter is. It panics if lim is
// nil. A call whose key's limit learns (bucket.Limit.WithFloor) gets a
// context that takes the feedback CheckResponse reports, for
// Limiter.Learn.
//
// A dispatcher admits jobs through its own limiter before they take a
// worker; do not add RateLimit to a dispatcher's handler for the same
// limiter, or each job is charged twice.
func RateLimit(lim *bucket.Limiter) Middleware {
	if lim == nil {
		panic("middleware: RateLimit: nil limiter")
	}
	return func(next Next) Next {
		return func(ctx context.Context) error {
			info, ok := jobinfo.FromContext(ctx)
			switch {
			case !ok:
				return fmt.Errorf("middleware: RateLimit: the call's context carries no key (use Keyed): %w", bucket.ErrEmptyKey)
			case info.Key == "":
				return fmt.Errorf("middleware: RateLimit: the call's key is empty: %w", bucket.ErrEmptyKey)
			}
			if err := lim.Wait(ctx, info.Key); err != nil {
				return fmt.Errorf("middleware: rate limit of key %q: %w", info.Key, err)
			}
			if lim.Limit(info.Key).IsLearned() {
				ctx = bucket.NewReporterContext(ctx, learning{lim, info.Key})
			}
			return next(ctx)
		}
	}
}

// learning reports a call's feedback to its key's bucket in a Limiter
// (Limiter.Learn), for RateLimit.
type learning struct {
	lim *bucket.Limiter
	key string
}

func (l learning) Report(ctx context.Context, fb bucket.Feedback) bool {
	_, err := l.lim.Learn(context.WithoutCancel(ctx), l.key, fb)
	return err == nil
}
