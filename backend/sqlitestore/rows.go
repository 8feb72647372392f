package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// load reads key's row into e, at host time host.
func (s *Store) load(e *entry, key string, host int64) error {
	e.key, e.dirty, e.leased = key, false, false
	bg := context.Background()
	rows, err := s.stmt.load.QueryContext(bg, []byte(key))
	if err != nil {
		return err
	}
	defer rows.Close()
	e.exists = rows.Next()
	if !e.exists {
		if err := rows.Err(); err != nil {
			return err
		}
		e.st.TAT, e.st.Paused, e.st.Gen, e.st.Quotas = 0, 0, 0, e.st.Quotas[:0]
		// A key without a row may have been deleted by a sweep: its
		// clock must not run back before the sweep's (see below).
		var swept int64
		if err := s.stmt.swept.QueryRowContext(bg).Scan(&swept); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return &Error{kind: ErrCorrupt, Err: errors.New("the clock row is missing")}
			}
			return err
		}
		e.now = max(host, swept)
		return nil
	}
	var (
		seen   int64
		quotas sql.RawBytes
	)
	if err := rows.Scan(&e.st.TAT, &e.st.Paused, &e.st.Gen, &seen, &quotas); err != nil {
		return err
	}
	if e.st.Quotas, err = decodeQuotas(quotas, e.st.Quotas); err != nil {
		return &Error{kind: ErrCorrupt, Err: fmt.Errorf("row of key %s: %w", quoteKey(key), err)}
	}
	// The clock of a key never runs backwards: not before the time its row
	// was last decided at, when quota slots that an earlier time still
	// counts may have been pruned; nor, for a key without a row, before
	// the latest sweep, which judged rows fresh by its time. (A row was
	// written at a time no earlier than the sweeps before it.)
	e.now = max(host, seen)
	return rows.Close()
}

// save writes e's row if its state changed. A key without a row whose
// state is fresh needs none, unless it holds a lease: a key's row stays
// while a lease of it is held (see sweepStep). A row that has become
// fresh is still written: deleting it is the sweep's, which records the
// time it judged by.
func (s *Store) save(e *entry) error {
	if !e.dirty {
		return nil
	}
	fresh := driver.FreshAt(&e.st)
	if !e.exists && fresh <= e.now && (!e.leased || e.ls.Count(e.now) == 0) {
		return nil
	}
	var quotas any // NULL
	if quotasUsed(e.st.Quotas) {
		s.buf = appendQuotas(s.buf[:0], e.st.Quotas)
		quotas = s.buf
	}
	stmt := s.stmt.update
	if !e.exists {
		stmt = s.stmt.insert
	}
	if _, err := stmt.ExecContext(context.Background(), []byte(e.key), e.st.TAT, e.st.Paused, e.st.Gen, e.now, fresh, quotas); err != nil {
		return err
	}
	e.exists, e.dirty = true, false
	s.written++
	s.pages++
	return nil
}
