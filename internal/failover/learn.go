package failover

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// LearnAnswer answers a driver.LearnBackend's Learn of a learned limit
// that the server could not take because it is unavailable (cause, nil if
// it was not asked): under FailLocal the local buckets learn it, and
// their decisions apply it while the server is down; under FailOpen,
// whose admissions are unlimited, there is no one to tell, and it returns
// lim's own interval as a store of ticks of unit finds it; under
// FailClosed an error matching Config.Unavailable.
func (g *Guard) LearnAnswer(ctx context.Context, key string, lim driver.Limit, fb driver.Feedback, unit time.Duration, cause error) (time.Duration, error) {
	switch g.cfg.Policy {
	case FailLocal:
		return g.local.Learn(ctx, key, lim, fb)
	case FailOpen:
		return driver.Learn(new(driver.State), &lim, new(driver.Feedback), unit, 0), nil
	}
	return 0, g.Unavailable(cause)
}
