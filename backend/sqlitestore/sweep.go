package sqlitestore

import (
	"context"
	"database/sql"
	"time"
)

const (
	// Every sweepEvery rows written, a write transaction examines twice as
	// many rows, in key order from where the last one stopped, and deletes
	// those that are fresh: a row is examined again after at most half as
	// many rows written as there are rows, and the look costs a
	// transaction that finds nothing a read of a page or two, once in
	// sweepEvery.
	sweepEvery = 16
	// sweepChunk is how many rows one transaction of sweep examines, so
	// that admissions interleave with a long sweep.
	sweepChunk = 512
)

// sweepDue runs a step of the incremental sweep if enough rows were
// written since the last.
func (s *Store) sweepDue(host int64) error {
	if s.written < sweepEvery {
		return nil
	}
	n := 2 * s.written
	s.written = 0
	var err error
	s.cursor, _, err = s.sweepStep(s.cursor, host, n)
	return err
}

// sweepStep examines up to n rows in key order after cursor (from the
// first if cursor is nil), deletes those fresh at now whose keys hold no
// lease, with their expired lease rows, and returns the cursor to
// continue from, nil once the last row was examined, and how many rows it
// deleted. The cursor's memory is reused.
//
// A fresh row stays while a lease of its key is held, so that the key is
// not forgotten under its holder. The scan itself looks up the leases of
// the fresh rows it returns (an index probe each), so that a key holding
// leases costs a sweep no statement of its own.
func (s *Store) sweepStep(cursor []byte, now int64, n int) ([]byte, int, error) {
	bg := context.Background()
	var rows *sql.Rows
	var err error
	if cursor == nil {
		rows, err = s.stmt.scanFirst.QueryContext(bg, n, now)
	} else {
		rows, err = s.stmt.scanNext.QueryContext(bg, cursor, n, now)
	}
	if err != nil {
		return cursor, 0, err
	}
	defer rows.Close()
	examined := 0
	s.doomed = s.doomed[:0]
	for rows.Next() {
		var (
			key    sql.RawBytes
			fresh  int64
			leased sql.NullInt64 // the latest expiry of the key's leases, for a fresh row
		)
		if err := rows.Scan(&key, &fresh, &leased); err != nil {
			return cursor, 0, err
		}
		examined++
		s.last = append(s.last[:0], key...)
		if fresh <= now && (!leased.Valid || leased.Int64 <= now) {
			i := len(s.doomed)
			if i < cap(s.doomed) {
				s.doomed = s.doomed[:i+1]
			} else {
				s.doomed = append(s.doomed, doomedRow{})
			}
			d := &s.doomed[i]
			d.key, d.leases = append(d.key[:0], key...), leased.Valid
		}
	}
	if err := rows.Err(); err != nil {
		return cursor, 0, err
	}
	if examined < n {
		cursor = nil
	} else {
		cursor = append(cursor[:0], s.last...)
	}
	if err := rows.Close(); err != nil {
		return cursor, 0, err
	}
	for _, d := range s.doomed {
		if _, err := s.stmt.remove.ExecContext(bg, d.key, now); err != nil {
			return cursor, 0, err
		}
		if d.leases {
			if _, err := s.stmt.prune.ExecContext(bg, d.key, now); err != nil {
				return cursor, 0, err
			}
		}
	}
	if len(s.doomed) > 0 {
		// Later decisions must not run the clock back before the time by
		// which these rows were judged fresh (see load).
		if _, err := s.stmt.mark.ExecContext(bg, now); err != nil {
			return cursor, 0, err
		}
	}
	return cursor, len(s.doomed), nil
}

// A doomedRow is a row a sweep step found fresh, its key holding no lease.
type doomedRow struct {
	key    []byte
	leases bool // the key has lease rows, all expired
}

// sweep deletes the rows of every key whose bucket is fresh and holds no
// lease (guarantee 8), and every expired lease. It examines every bucket
// row, a chunk of rows per transaction so that admissions run in
// between, and in the first reads the whole leases table, which holds
// about as many rows as leases are held; the background sweep
// (Options.SweepInterval) calls it.
func (s *Store) sweep(ctx context.Context) error {
	var cursor []byte
	first := true
	for {
		err := s.txn(ctx, "sweep", func(host int64) error {
			if first {
				if _, err := s.stmt.expire.ExecContext(context.Background(), host); err != nil {
					return err
				}
			}
			var err error
			cursor, _, err = s.sweepStep(cursor, host, sweepChunk)
			return err
		})
		first = false
		if err != nil || cursor == nil {
			return err
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
			s.sweep(ctx) // a failure (a long lock) is retried at the next tick
		case <-ctx.Done():
			return
		}
	}
}
