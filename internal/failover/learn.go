package failover

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// LearnAnswer answers a Learn the server could not take because it is
// unavailable (cause, nil if it was not asked). Under FailLocal the local
// buckets learn fb, as they decide the key's admissions until the server
// answers; under FailOpen, which admits without limit, there is no one to
// tell, and it returns lim's own interval; under FailClosed, an error.
func (g *Guard) LearnAnswer(ctx context.Context, key string, lim driver.Limit, fb driver.Feedback, cause error) (time.Duration, error) {
	switch g.cfg.Policy {
	case FailOpen:
		return lim.Interval(), nil
	case FailLocal:
		return g.local.Learn(ctx, key, lim, fb)
	}
	return 0, g.Unavailable(cause)
}
