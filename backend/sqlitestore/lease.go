package sqlitestore

import (
	"context"
	"database/sql"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The leases of capped limits (driver.Limit.Inflight) live in the leases
// table, one row per lease, beside the buckets rows and changed in the
// same transactions: an admission of a capped request reads its key's
// lease rows, decides with driver.DecideLeased and writes the lease it
// takes with the bucket's row, in one BEGIN IMMEDIATE transaction. A
// lease expires on the store's clock, the host's in microseconds.

// loadLeases reads the leases of e's key held at e.now into e.ls, and
// deletes the key's expired lease rows. It reads every held lease: a
// capped admission costs a row read per lease held, up to the cap.
func (s *Store) loadLeases(e *entry) error {
	bg := context.Background()
	e.ls.Held = e.ls.Held[:0]
	rows, err := s.stmt.leases.QueryContext(bg, []byte(e.key))
	if err != nil {
		return err
	}
	defer rows.Close()
	expired := false
	for rows.Next() {
		var (
			id      sql.RawBytes
			expires int64
		)
		if err := rows.Scan(&id, &expires); err != nil {
			return err
		}
		if expires <= e.now {
			expired = true
			continue
		}
		e.ls.Held = append(e.ls.Held, driver.HeldLease{ID: driver.LeaseID(id), Expires: expires})
	}
	if err := rows.Close(); err != nil {
		return err
	}
	e.leased = true
	if expired {
		return s.pruneLeases(e.key, e.now)
	}
	return nil
}

// pruneLeases deletes key's lease rows expired at now.
func (s *Store) pruneLeases(key string, now int64) error {
	res, err := s.stmt.prune.ExecContext(context.Background(), []byte(key), now)
	if err != nil {
		return err
	}
	n, _ := res.RowsAffected()
	s.pages += int(n)
	return nil
}

// putLease writes lease id of e's key as e.ls holds it, just taken or
// renewed by an admission.
func (s *Store) putLease(e *entry, id driver.LeaseID) error {
	for _, h := range e.ls.Held {
		if h.ID == id {
			if _, err := s.stmt.putLease.ExecContext(context.Background(), []byte(e.key), []byte(id), h.Expires); err != nil {
				return err
			}
			s.pages++
			return nil
		}
	}
	return nil
}

// Renew implements driver.LeaseBackend: in one transaction, it extends
// each lease still held to ttl from its key's clock, never shortening it,
// and returns those not held. It blocks as Admit does.
func (s *Store) Renew(ctx context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if s.closed.Load() {
		return nil, driver.ErrClosed
	}
	if err := driver.CheckRenew(ttl); err != nil {
		return nil, err
	}
	if len(leases) == 0 {
		return nil, nil
	}
	ticks := driver.Ticks(ttl, unit)
	var lost []driver.LeaseRef
	err := s.txn(ctx, "renew", func(host int64) error {
		lost = lost[:0]
		e := &s.one
		e.key = ""
		for i, l := range leases {
			if i == 0 || l.Key != e.key {
				if err := s.load(e, l.Key, host); err != nil {
					return err
				}
			}
			res, err := s.stmt.renew.ExecContext(context.Background(), []byte(l.Key), []byte(l.ID), e.now, e.now+ticks)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				lost = append(lost, l)
			} else {
				s.pages++
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return lost, nil
}

// Release implements driver.LeaseBackend: it deletes the named leases in
// one transaction. It blocks as Admit does.
func (s *Store) Release(ctx context.Context, leases []driver.LeaseRef) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if len(leases) == 0 {
		return nil
	}
	return s.txn(ctx, "release", func(int64) error {
		for _, l := range leases {
			if err := s.releaseLease(l.Key, l.ID); err != nil {
				return err
			}
		}
		return nil
	})
}

// releaseLease deletes lease id of key, if it has a row.
func (s *Store) releaseLease(key string, id driver.LeaseID) error {
	res, err := s.stmt.release.ExecContext(context.Background(), []byte(key), []byte(id))
	if err != nil {
		return err
	}
	n, _ := res.RowsAffected()
	s.pages += int(n)
	return nil
}
