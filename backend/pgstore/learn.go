package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Learn implements driver.LearnBackend: decide_v3 applies fb to key's
// row as driver.Learn does, under the locks and in the statement of the
// key's admissions, on the database's clock, in a round trip shared with
// concurrent calls (as Admit's). It blocks for that round trip, which ctx
// does not cancel (Options.Timeout bounds it): if ctx ends first Learn
// returns ctx's error at once, and fb may have been learned. A fixed
// limit learns nothing, and its interval is returned without a round
// trip.
//
// While PostgreSQL is unavailable, Learn under FailLocal learns in the
// local buckets, whose decisions then apply it; under FailOpen it returns
// the limit's own interval (admissions are unlimited); under FailClosed
// an error matching ErrUnavailable. Under FailLocal, units remaining none
// pause the local bucket too, as Pause does, so that the pause outlives
// a failure of PostgreSQL.
func (s *Store) Learn(ctx context.Context, key string, lim driver.Limit, fb driver.Feedback) (time.Duration, error) {
	if err := driver.CheckLearn(key, &lim, &fb); err != nil {
		return 0, err
	}
	if err := checkKey(key); err != nil {
		return 0, err
	}
	if s.closed.Load() {
		return 0, driver.ErrClosed
	}
	if !lim.Learned() {
		return driver.Learn(new(driver.State), &lim, &fb, tick, 0), nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if fb.HasRemaining && fb.Remaining == 0 && fb.Reset > 0 {
		s.guard.Pause(ctx, key, fb.Reset)
	}
	ask, probe := s.guard.Ask()
	var err error
	if ask {
		var a answer
		a, err = s.admits.Do(ctx, admission{op: learnOp(key, &lim, &fb)})
		s.guard.Settle(err, probe)
		switch {
		case err == nil:
			return time.Duration(a.interval) * tick, nil
		case ctx.Err() != nil:
			return 0, ctx.Err()
		case errors.Is(err, driver.ErrClosed):
			return 0, err
		case !isUnavailable(err):
			return 0, fmt.Errorf("pgstore: key %q: %w", key, err)
		}
	}
	return s.guard.LearnAnswer(ctx, key, lim, fb, tick, err)
}
