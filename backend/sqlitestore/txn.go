package sqlitestore

import (
	"context"
	"strconv"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// clock returns the host clock in ticks.
func (s *Store) clock() int64 { return s.now().UnixMicro() }

func (s *Store) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return driver.ErrClosed
	}
	if s.closed.Load() {
		<-s.sem
		return driver.ErrClosed
	}
	return nil
}

func (s *Store) release() { <-s.sem }

// txn runs fn in one BEGIN IMMEDIATE transaction, with the host clock read
// once the write lock is held: in lock order, across processes, the clock
// never runs backwards unless the host's does. If fn fails or the commit
// does, nothing fn did is kept. A store whose path no longer names its
// file opens the path instead and fails with ErrMoved (see moved.go).
func (s *Store) txn(ctx context.Context, op string, fn func(host int64) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	if s.db == nil { // the file moved and the path could not be opened
		if err := s.connect(); err != nil {
			return &Error{Op: op, Path: s.path, Err: wrapErr("open", s.path, err), kind: ErrMoved}
		}
	}
	if err := s.begin(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return s.failed(op, err)
	}
	bg := context.Background()
	host := s.clock()
	if s.checkDue(host) && s.moved() {
		s.stmt.rollback.ExecContext(bg)
		return wrapErr(op, s.path, s.follow())
	}
	committed, rollback := false, s.stmt.rollback
	defer func() {
		if !committed {
			// fn failed, the commit did, or fn panicked: never leave the
			// connection inside a transaction. This fails harmlessly if
			// SQLite already rolled back, or failed let go of the file.
			rollback.ExecContext(bg)
		}
	}()
	if err := fn(host); err != nil {
		return s.failed(op, err)
	}
	if _, err := s.stmt.commit.ExecContext(bg); err != nil {
		return s.failed(op, err)
	}
	committed = true
	if s.pages >= s.checkpointEvery {
		s.checkpoint()
	}
	return nil
}

// failed returns the error of op, a transaction that failed with err and
// changed nothing: ErrMoved if the path no longer names the store's file,
// whose failures that would explain, err otherwise.
func (s *Store) failed(op string, err error) error {
	if s.moved() {
		s.stmt.rollback.ExecContext(context.Background())
		err = s.follow()
	}
	return wrapErr(op, s.path, err)
}

// checkpoint copies the WAL into the database file and has the next
// writer start the WAL over, so that it stays small.
//
// SQLite's automatic checkpoint (disabled on the store's connection) runs
// after any commit that leaves the WAL over 1,000 pages, in whichever
// process made it. With several processes writing, the checkpoint rarely
// completes before another process appends, so the WAL is never started
// over: it grows without bound and every commit runs a checkpoint, with
// an fsync, forever after. A RESTART checkpoint instead holds the write
// lock while it copies, and waits for readers to leave the WAL, so that
// the next writer starts it over. It waits at most checkpointWait, then
// does what it could and is tried again a little later; other processes
// wait for the write lock meanwhile, as for any transaction. Errors are
// ignored: the commit before it stands, and a later checkpoint catches up.
func (s *Store) checkpoint() {
	bg := context.Background()
	var busy, log, done int
	_, err := s.conn.ExecContext(bg, "PRAGMA busy_timeout = "+strconv.Itoa(int(checkpointWait/time.Millisecond)))
	if err == nil {
		err = s.conn.QueryRowContext(bg, "PRAGMA wal_checkpoint(RESTART)").Scan(&busy, &log, &done)
	}
	s.conn.ExecContext(bg, "PRAGMA busy_timeout = 0")
	if err == nil && busy == 0 {
		s.pages = 0
	} else {
		s.pages = s.checkpointEvery - s.checkpointEvery/8
	}
}

// checkpointWait bounds the wait of a checkpoint for the write lock and
// for readers.
const checkpointWait = 20 * time.Millisecond

// begin tries again for a write lock held by another connection after
// retryFirst, then after twice as long each time, up to retryMost. Go's
// timers on Linux sleep at least about a millisecond anyway.
const (
	retryFirst = time.Millisecond
	retryMost  = 8 * time.Millisecond
)

// begin starts a BEGIN IMMEDIATE transaction, waiting up to the busy
// timeout for another connection's write lock, or until ctx ends. Once
// the lock is held the transaction runs to its end: only begin waits.
//
// SQLite's own busy handler waits in sleeps growing to 100 ms, so that
// processes which all found the lock taken could all be asleep while it
// is free for that long; the sleeps here stop growing at 8 ms. Trying
// more often than that costs CPU for little: with four processes writing
// as fast as they can, retrying every millisecond spends about a third
// more CPU per admission than this, on lock system calls and on page
// caches that SQLite drops each time the lock changes hands.
func (s *Store) begin(ctx context.Context) error {
	var deadline time.Time
	sleep := retryFirst
	for {
		_, err := s.stmt.begin.ExecContext(context.Background())
		if err == nil || !isBusy(err) {
			return err
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(s.busy)
		}
		wait := deadline.Sub(now)
		if wait <= 0 {
			return err
		}
		if s.timer == nil {
			s.timer = time.NewTimer(min(wait, sleep))
		} else {
			s.timer.Reset(min(wait, sleep))
		}
		select {
		case <-s.timer.C:
		case <-ctx.Done():
			s.timer.Stop()
			return ctx.Err()
		case <-s.done:
			s.timer.Stop()
			return driver.ErrClosed
		}
		sleep = min(2*sleep, retryMost)
	}
}
