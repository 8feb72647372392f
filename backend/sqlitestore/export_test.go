package sqlitestore

import (
	"context"

	"github.com/leakybucket/leakybucket/bucket"
)

// QueueLen returns how many Admit calls wait to join a transaction.
func QueueLen(s *Store) int { return s.admits.Len() }

// Leading reports whether an Admit call is running a transaction for the
// calls queued.
func Leading(s *Store) bool { return s.admits.Running() > 0 }

// Sweep deletes the rows of every key whose bucket is fresh, as the
// background sweep does.
func (s *Store) Sweep(ctx context.Context) error { return s.sweep(ctx) }

// Has reports whether the file holds a row for key: its bucket's or a
// lease's.
func (s *Store) Has(ctx context.Context, key string) (bool, error) {
	n, err := s.count(ctx, "has", `SELECT (SELECT count(*) FROM buckets WHERE key = ?1)
		+ (SELECT count(*) FROM leases WHERE key = ?1)`, []byte(key))
	return n > 0, err
}

// Len returns the number of keys the file holds rows for.
func (s *Store) Len(ctx context.Context) (int, error) {
	n, err := s.count(ctx, "len", `SELECT count(*) FROM buckets`)
	return int(n), err
}

func (s *Store) count(ctx context.Context, op, query string, args ...any) (int64, error) {
	if s.closed.Load() {
		return 0, bucket.ErrClosed
	}
	var n int64
	err := s.txn(ctx, op, func(int64) error {
		return s.conn.QueryRowContext(context.Background(), query, args...).Scan(&n)
	})
	return n, err
}
