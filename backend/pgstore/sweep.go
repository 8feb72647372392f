package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// sweepChunk is how many rows one statement of the sweep deletes, so that
// a sweep of many rows holds the schema's lock a few milliseconds at a
// time (it scans the table for them without it).
const sweepChunk = 1000

// sweep deletes the rows of every key whose bucket is fresh (guarantee
// 8), a chunk per statement, and returns how many it deleted.
func (s *Store) sweep(ctx context.Context) (int64, error) {
	var total int64
	retried := false
	for {
		ctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := s.ensureSchema(ctx)
		var n int64
		if err == nil {
			err = s.pool.QueryRow(ctx, s.sql.sweep, pgx.QueryExecModeExec, sweepChunk).Scan(&n)
		}
		cancel()
		if err != nil && !retried && s.schemaGone(err) {
			retried = true
			continue
		}
		if err != nil {
			return total, err
		}
		total += n
		if n < sweepChunk {
			return total, nil
		}
	}
}

func (s *Store) sweepEvery(ctx context.Context, every time.Duration) {
	defer s.sweeper.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.sweep(ctx) // a failure (the database is down) is retried at the next tick
		case <-ctx.Done():
			return
		}
	}
}
