package sqlitestore

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Learn implements driver.LearnBackend: in one transaction, it reads the
// key's row, applies fb with driver.Learn at the key's clock and writes
// the row back, the record leading its quotas column; every admission of
// a learned limit that reads the row after applies it. It blocks as Admit
// does. A fixed limit learns nothing: its interval is returned without
// touching the file.
func (s *Store) Learn(ctx context.Context, key string, lim driver.Limit, fb driver.Feedback) (time.Duration, error) {
	if s.closed.Load() {
		return 0, driver.ErrClosed
	}
	if err := driver.CheckLearn(key, &lim, &fb); err != nil {
		return 0, err
	}
	if !lim.Learned() {
		var st driver.State
		return driver.Learn(&st, &lim, &fb, unit, 0), nil
	}
	var iv time.Duration
	err := s.txn(ctx, "learn", func(host int64) error {
		e := &s.one
		if err := s.load(e, key, host); err != nil {
			return err
		}
		iv = driver.Learn(&e.st, &lim, &fb, unit, e.now)
		e.dirty = true
		return s.save(e)
	})
	if err != nil {
		return 0, err
	}
	return iv, nil
}
