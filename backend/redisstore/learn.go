package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Learn implements driver.LearnBackend. It blocks for a round trip to
// Redis, in which the script applies fb to the bucket's state as
// driver.Learn does, on Redis's clock, atomically with the key's
// admissions: what one process learns, every process sharing the Redis
// applies from its next decision. The learned record is kept in the
// bucket's own key (so in its Cluster slot), which lives until the record
// expires. A fixed limit learns nothing, and Redis is not asked. The round
// trip does not depend on ctx, as in AdmitBatch.
//
// While Redis (in a Cluster, the master of key's slot) is unavailable,
// Learn answers by the FailurePolicy: FailClosed returns an error
// matching ErrUnavailable; FailOpen returns lim's own interval, nil;
// FailLocal learns into the process's local bucket, which decides the
// key's admissions until Redis answers again (what Redis learned stays
// there; what the local bucket learned stays local).
func (s *Store) Learn(ctx context.Context, key string, lim driver.Limit, fb driver.Feedback) (time.Duration, error) {
	if err := driver.CheckLearn(key, &lim, &fb); err != nil {
		return 0, err
	}
	if s.closed.Load() {
		return 0, driver.ErrClosed
	}
	if !lim.Learned() {
		return time.Duration((&driver.Request{Limit: lim, Cost: 1}).Terms(tick).Interval) * tick, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if !s.begin() {
		return 0, driver.ErrClosed
	}
	defer s.end()
	m, ask, probe := s.ask(key)
	if !ask {
		return s.guard.LearnAnswer(ctx, key, lim, fb, time.Microsecond, m.cause())
	}
	res := s.runOne(context.WithoutCancel(ctx), s.opOf(key, appendLearn(nil, &lim, &fb)))
	err := res.err
	s.settle(key, m, err, probe)
	switch {
	case err == nil:
		return time.Duration(res.r.interval) * tick, nil
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case !isUnavailable(err):
		return 0, fmt.Errorf("redisstore: key %q: %w", key, err)
	}
	return s.guard.LearnAnswer(ctx, key, lim, fb, time.Microsecond, err)
}
