package dispatcher

import (
	"context"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A learner makes keys of learned limits learn what their handlers report
// (bucket.Report, middleware.CheckResponse): one per dispatcher whose
// backend keeps learned limits.
type learner struct {
	backend driver.LearnBackend
	base    context.Context
	stats   *counters
}

// learn applies fb to key's bucket under lim, for the admission whose
// booking had generation gen, in the handler's goroutine: one round trip.
// It reports whether the key learned it; a backend error is counted, and
// the handler's caller falls back to what it would do without learning.
func (l *learner) learn(key string, lim *driver.Limit, gen int64, fb bucket.Feedback, ks *keyCounters) bool {
	dfb, err := fb.Driver(gen)
	if err != nil {
		return false
	}
	iv, err := l.backend.Learn(l.base, key, *lim, dfb)
	if err != nil {
		l.stats.backendErrors.Add(1)
		l.stats.setBackendErr(err)
		return false
	}
	l.stats.learned.Add(1)
	if ks != nil {
		ks.interval.Store(int64(iv))
	}
	return true
}
