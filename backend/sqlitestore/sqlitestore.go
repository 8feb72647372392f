// Package sqlitestore keeps bucket state in an SQLite file that any number
// of processes on one host share, through modernc.org/sqlite (no cgo).
//
// Each admission is decided in a BEGIN IMMEDIATE transaction: read the
// key's row, decide with driver.Decide, write the row. An admission of a
// limit with an inflight cap also reads the key's leases, a table of
// their own, and writes the lease it takes, in the same transaction
// (driver.DecideLeased): a Store is a driver.LeaseBackend, whose leases
// expire on the host clock. It is a driver.LearnBackend too: what a key of
// a learned limit learned lives in its row, read and written with it. A
// Store is safe for concurrent use; its calls block while the file's one
// writer is busy: other calls of the process take turns in arrival order,
// and other processes hold the file's write lock for up to
// Options.BusyTimeout. Concurrent Admit calls of a process share
// transactions, and AdmitBatch decides a whole batch in one, so that the
// cost of a transaction is paid once for many admissions. A Store owns
// one goroutine, the background sweep, until Close. See docs/sqlite.md
// for when to choose this backend and how to run it, and
// docs/benchmarks.md for its figures.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
)

// Options configures a Store. The zero Options is ready to use.
type Options struct {
	// BusyTimeout is how long an operation waits for another process's
	// write lock before failing with an error matching ErrLocked. Default
	// 5s; it is rounded up to a whole millisecond. Negative is invalid.
	BusyTimeout time.Duration
	// FullSync makes every commit durable against power loss and operating
	// system crashes (PRAGMA synchronous=FULL), at the cost of an fsync per
	// transaction. Default false: synchronous=NORMAL, which in WAL mode
	// survives any process crash but may lose the last transactions, and so
	// forget the last admissions, if the machine loses power.
	FullSync bool
	// SweepInterval is how often a background sweep deletes the rows of
	// keys whose buckets have become fresh (guarantee 8). Write
	// transactions also delete a few such rows as they go, so the sweep
	// matters only for keys that nothing writes near. Default one minute; a
	// negative value disables it.
	SweepInterval time.Duration
	// CheckpointEvery is how many rows the Store writes between the
	// checkpoints it runs, which copy the WAL into the database file and
	// have the next writer start it over (see docs/sqlite.md): about as
	// many pages of WAL. Default DefaultCheckpointEvery; negative is
	// invalid.
	CheckpointEvery int
	// Now returns the current time; the store counts Unix microseconds of
	// it. Default time.Now, the host clock, which every process sharing a
	// file reads alike. Set it to drive a store from a fake clock in tests;
	// it also paces the store's check that its path still names its file
	// (see ErrMoved).
	Now func() time.Time
}

// DefaultBusyTimeout is the BusyTimeout of the zero Options.
const DefaultBusyTimeout = 5 * time.Second

// DefaultCheckpointEvery is the CheckpointEvery of the zero Options.
const DefaultCheckpointEvery = 1000

// A Store is a driver.BatchBackend, driver.LeaseBackend and
// driver.LearnBackend on one SQLite file. It is safe for concurrent use.
// Stores on the same file, in this process or in others on the same host,
// share every bucket, every lease and what every key learned exactly.
//
// A Store holds one connection, SQLite having one writer at a time: its
// operations take turns on it, in arrival order, with those of the other
// Stores of the process on the same file; across processes they take
// turns on the file's write lock. Its clock is the host clock in
// Unix microseconds (Decision.Now is in Unix nanoseconds), kept from
// running backwards per key: see docs/sqlite.md.
//
// If the file is removed or replaced while the Store has it open, the
// Store notices at its first operation 100 ms or more (by its clock)
// after it last looked, and opens the file now at the path in its place,
// failing that operation with ErrMoved.
//
// Close it to release the file; calls after Close return driver.ErrClosed.
type Store struct {
	path string
	dsn  string // the driver's name for the file at path
	busy time.Duration
	now  func() time.Time
	db   *sql.DB // nil once the file moved and the path could not be opened again
	conn *sql.Conn
	stmt statements
	file opened // the files db has open (see moved.go)

	sem    chan struct{} // the writer token of the file in this process (see writers); its holder uses conn, stmt and the scratch below
	done   chan struct{} // closed by Close
	closed atomic.Bool

	admits   *coalesce.Batcher[driver.Request, driver.Decision]
	combined []driver.Admission // scratch space of the transaction of Admit calls

	// Scratch space, owned by the holder of sem.
	one     entry          // the key of a Refund, Pause or Learn
	entries []entry        // the keys of an AdmitBatch
	index   map[string]int // key → position in entries
	buf     []byte         // an encoded quotas column
	timer   *time.Timer    // paces retries of BEGIN IMMEDIATE
	written int            // rows written since the last incremental sweep
	pages   int            // rows written since the last checkpoint

	checkpointEvery int         // Options.CheckpointEvery
	cursor          []byte      // the key the incremental sweep stopped at, nil at the start
	doomed          []doomedRow // rows a sweep step found fresh
	last            []byte      // the last key a sweep step examined

	stopSweep context.CancelFunc
	sweeper   sync.WaitGroup
}

type statements struct {
	begin, commit, rollback *sql.Stmt
	load, swept             *sql.Stmt
	insert, update          *sql.Stmt
	scanFirst, scanNext     *sql.Stmt
	remove, mark            *sql.Stmt
	leases, putLease, prune *sql.Stmt
	renew, release, expire  *sql.Stmt
}

// unit is the store's tick: its clock counts Unix microseconds.
const unit = time.Microsecond

// An entry is one key's state during a transaction.
type entry struct {
	key    string
	st     driver.State
	ls     driver.Leases   // the key's held leases, once leased
	spare  *driver.Learned // the memory of st.Learned when read from the row
	now    int64           // the key's clock: the host's, or later if the key has seen later
	exists bool            // the key has a row
	dirty  bool            // st changed
	leased bool            // ls was read from the file (loadLeases)
}

// maxKept is the most keys of a batch whose scratch memory a store keeps
// for the next batch.
const maxKept = 1024

// AdmitBatch implements driver.BatchBackend: it decides the whole batch in
// one transaction, in order, at one instant, reading and writing each key
// once. Invalid requests get their error without touching the file; if the
// transaction fails, every other admission gets its error and none is
// charged.
func (s *Store) AdmitBatch(ctx context.Context, batch []driver.Admission) {
	pending := 0
	for i := range batch {
		a := &batch[i]
		a.Decision, a.Err = driver.Decision{}, nil
		switch {
		case s.closed.Load():
			a.Err = driver.ErrClosed
		default:
			if a.Err = a.Request.Validate(); a.Err == nil {
				pending++
			}
		}
	}
	if pending == 0 {
		return
	}
	if err := s.admitTxn(ctx, batch); err != nil {
		for i := range batch {
			if a := &batch[i]; inTxn(a) {
				a.Decision, a.Err = driver.Decision{}, err
			}
		}
	}
}

// inTxn reports whether a is decided in the transaction of admitTxn.
func inTxn(a *driver.Admission) bool { return a.Err == nil }

// admitTxn decides, in one transaction and in order, the admissions of
// batch that have no error and a limit, setting their decisions. It
// returns the transaction's error, in which case nothing was charged.
func (s *Store) admitTxn(ctx context.Context, batch []driver.Admission) error {
	return s.txn(ctx, "admit", func(host int64) error { return s.decide(host, batch) })
}

// decide decides, within a transaction at host time host, the admissions
// of batch that have no error and a limit. A key whose row cannot be read
// fails its own admissions, not the others'.
func (s *Store) decide(host int64, batch []driver.Admission) error {
	if len(s.index) > maxKept {
		// A huge batch is past: let its memory go.
		s.index, s.entries = make(map[string]int), nil
	}
	clear(s.index)
	s.entries = s.entries[:0]
	for i := range batch {
		a := &batch[i]
		if !inTxn(a) {
			continue
		}
		e, err := s.entry(a.Key, host)
		if errors.Is(err, ErrCorrupt) {
			a.Err = wrapErr("admit", s.path, err)
			continue
		}
		if err != nil {
			return err
		}
		capped := a.Limit.Inflight > 0
		if capped && !e.leased {
			if err := s.loadLeases(e); err != nil {
				return err
			}
		}
		// A refusal changes nothing worth writing, but for the quotas'
		// shape when the limit changed at runtime: the usage of windows
		// the limit no longer has is dropped, as every backend drops it.
		reshape := len(e.st.Quotas) > 0 && !sameWindows(e.st.Quotas, a.Limit.Quotas)
		d, err := driver.DecideLeased(&e.st, &e.ls, &a.Request, unit, e.now)
		if err != nil {
			return err
		}
		a.Decision = d
		e.dirty = e.dirty || d.Allowed || reshape
		if capped && d.Allowed {
			if err := s.putLease(e, a.Lease); err != nil {
				return err
			}
		}
	}
	for i := range s.entries {
		if err := s.save(&s.entries[i]); err != nil {
			return err
		}
	}
	return s.sweepDue(host)
}

// sameWindows reports whether the quota states qs have the windows of
// the quotas of a limit, in order: whether driver.Decide keeps them as
// they are.
func sameWindows(qs []driver.QuotaState, quotas []driver.Quota) bool {
	if len(qs) != len(quotas) {
		return false
	}
	for i, q := range quotas {
		if qs[i].Window != driver.Ticks(q.Window, unit) {
			return false
		}
	}
	return true
}

// entry returns the entry of key in the current batch, loading it on first
// use. The pointer is valid until the next call.
func (s *Store) entry(key string, host int64) (*entry, error) {
	if i, ok := s.index[key]; ok {
		return &s.entries[i], nil
	}
	i := len(s.entries)
	if i < cap(s.entries) {
		s.entries = s.entries[:i+1]
	} else {
		s.entries = append(s.entries, entry{})
	}
	e := &s.entries[i]
	if err := s.load(e, key, host); err != nil {
		s.entries = s.entries[:i]
		return nil, err
	}
	s.index[key] = i
	return e, nil
}

// Refund implements driver.Backend. For a request of a capped limit it
// also releases req.Lease, in the same transaction, whether or not the
// rate is given back (as driver.LeaseBackend requires).
func (s *Store) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	capped := req.Limit.Inflight > 0
	if !d.Allowed && !capped {
		return nil
	}
	if err := req.Validate(); err != nil {
		return err
	}
	return s.txn(ctx, "refund", func(host int64) error {
		if capped {
			if err := s.releaseLease(req.Key, req.Lease); err != nil {
				return err
			}
		}
		if !d.Allowed {
			return nil
		}
		e := &s.one
		if err := s.load(e, req.Key, host); err != nil || !e.exists {
			return err // a forgotten key has nothing to give back
		}
		gen := e.st.Gen
		driver.Refund(&e.st, &req, d, unit)
		e.dirty = e.st.Gen != gen // a refund that does nothing writes nothing
		return s.save(e)
	})
}

// Pause implements driver.Backend. The pause is measured on the store's
// clock and rounded up to a microsecond; d ≤ 0 does nothing.
func (s *Store) Pause(ctx context.Context, key string, d time.Duration) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if key == "" {
		return driver.ErrEmptyKey
	}
	if d <= 0 {
		return nil
	}
	ticks := driver.Ticks(min(d, driver.MaxDuration), unit)
	return s.txn(ctx, "pause", func(host int64) error {
		e := &s.one
		if err := s.load(e, key, host); err != nil {
			return err
		}
		driver.Pause(&e.st, e.now+ticks)
		e.dirty = true
		return s.save(e)
	})
}

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Close stops the background sweep, waits for the operation in progress
// and closes the file. Calls waiting for the write lock or queued for a
// transaction, and later calls, return driver.ErrClosed. It is
// idempotent.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.done)
	s.admits.Close()
	s.stopSweep()
	s.sweeper.Wait()
	s.sem <- struct{}{} // wait for the operation in progress
	var err error
	switch {
	case s.db == nil: // the file moved and the path could not be opened
	case s.moved():
		err = s.letGo()
	default:
		err = s.closeDB()
	}
	<-s.sem
	writers.close(s.path)
	return wrapErr("close", s.path, err)
}

// closeDB closes the statements, the connection and the database, and
// forgets them.
func (s *Store) closeDB() error {
	var errs []error
	for _, st := range []*sql.Stmt{
		s.stmt.begin, s.stmt.commit, s.stmt.rollback, s.stmt.load, s.stmt.swept, s.stmt.insert,
		s.stmt.update, s.stmt.scanFirst, s.stmt.scanNext, s.stmt.remove, s.stmt.mark,
		s.stmt.leases, s.stmt.putLease, s.stmt.prune, s.stmt.renew, s.stmt.release, s.stmt.expire,
	} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
	}
	errs = append(errs, s.db.Close())
	s.db, s.conn, s.stmt = nil, nil, statements{}
	return errors.Join(errs...)
}

// quoteKey quotes key for an error message, shortened if long.
func quoteKey(key string) string {
	if len(key) > 64 {
		return strconv.Quote(key[:64]) + "…"
	}
	return strconv.Quote(key)
}

var (
	_ driver.BatchBackend = (*Store)(nil)
	_ driver.LeaseBackend = (*Store)(nil)
	_ driver.LearnBackend = (*Store)(nil)
	_ io.Closer           = (*Store)(nil)
)
