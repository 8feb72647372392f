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
		e.st.TAT, e.st.Paused, e.st.Gen, e.st.Quotas, e.st.Learned = 0, 0, 0, e.st.Quotas[:0], nil
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
		seen  int64
		state sql.RawBytes
	)
	if err := rows.Scan(&e.st.TAT, &e.st.Paused, &e.st.Gen, &seen, &state); err != nil {
		return err
	}
	if err := e.decode(state); err != nil {
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
	var state any // NULL
	l := e.st.Learned
	if l != nil && max(l.Until, l.PaceUntil) <= e.now {
		l = nil // expired: the key's clock never runs back to where it held
	}
	if used := quotasUsed(e.st.Quotas); used || l != nil {
		b := s.buf[:0]
		if l != nil {
			b = appendLearned(b, l)
		}
		if used {
			b = appendQuotas(b, e.st.Quotas)
		}
		s.buf, state = b, b
	}
	stmt := s.stmt.update
	if !e.exists {
		stmt = s.stmt.insert
	}
	if _, err := stmt.ExecContext(context.Background(), []byte(e.key), e.st.TAT, e.st.Paused, e.st.Gen, e.now, fresh, state); err != nil {
		return err
	}
	e.exists, e.dirty = true, false
	s.written++
	s.pages++
	return nil
}

// decode decodes a row's quotas column into e.st: the learned record
// that leads it, if any, then the quota state.
func (e *entry) decode(b []byte) (err error) {
	e.st.Learned = nil
	if len(b) > 0 && b[0] == learnedFormat {
		if e.spare == nil {
			e.spare = new(driver.Learned)
		}
		if b, err = decodeLearned(b, e.spare); err != nil {
			return err
		}
		e.st.Learned = e.spare
	}
	e.st.Quotas, err = decodeQuotas(b, e.st.Quotas)
	return err
}
