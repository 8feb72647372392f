// Package sqlitestore keeps bucket state in an SQLite file that any number
// of processes on one host share, through modernc.org/sqlite (no cgo).
//
// Each admission is decided in a BEGIN IMMEDIATE transaction: read the
// key's row, decide with the mathematics of package bucket, write the row.
// Alone, an admission is one transaction and costs about 35 µs of CPU on a
// 2-core cloud VM: about 25,000 admissions/s from one process, and
// 21,000–23,000/s from four processes on one file together, since SQLite
// has one writer at a time. Concurrent Admit calls of a process share
// transactions (about 75,000/s from 8 goroutines), and AdmitBatch decides a
// whole batch in one (about 1,500,000/s in batches of 64 on one key). See
// docs/sqlite.md for when to choose this backend and how to run it.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
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
	// negative value disables it (call Sweep yourself).
	SweepInterval time.Duration
	// Now returns the current time; the store counts Unix microseconds of
	// it. Default time.Now, the host clock, which every process sharing a
	// file reads alike. Set it to drive a store from a fake clock in tests.
	Now func() time.Time
}

// DefaultBusyTimeout is the BusyTimeout of the zero Options.
const DefaultBusyTimeout = 5 * time.Second

// A Store is a driver.Backend and driver.BatchBackend on one SQLite file.
// It is safe for concurrent use. Stores on the same file, in this process
// or in others on the same host, share every bucket exactly.
//
// A Store holds one connection, SQLite having one writer at a time: its
// operations take turns on it, in arrival order, with those of the other
// Stores of the process on the same file; across processes they take
// turns on the file's write lock. Its clock is the host clock in
// Unix microseconds (Decision.Now is in Unix nanoseconds), kept from
// running backwards per key: see docs/sqlite.md.
//
// Close it to release the file; calls after Close return bucket.ErrClosed.
type Store struct {
	path string
	busy time.Duration
	now  func() time.Time
	db   *sql.DB
	conn *sql.Conn
	stmt statements

	sem    chan struct{} // the writer token of the file in this process (see writers); its holder uses conn, stmt and the scratch below
	done   chan struct{} // closed by Close
	closed atomic.Bool

	mu      sync.Mutex // guards the two below
	leading bool       // an Admit is leading a transaction for the queue
	queue   []*call    // Admit calls waiting for the next transaction

	// Scratch space of the leading Admit.
	calls    []*call
	combined []driver.Admission

	// Scratch space, owned by the holder of sem.
	one     entry          // the key of a Refund or Pause
	entries []entry        // the keys of an AdmitBatch
	index   map[string]int // key → position in entries
	buf     []byte         // encoded quotas
	timer   *time.Timer    // paces retries of BEGIN IMMEDIATE
	written int            // rows written since the last incremental sweep
	pages   int            // rows written since the last checkpoint

	checkpointEvery int      // checkpointEvery, but for tests
	cursor          []byte   // the key the incremental sweep stopped at, nil at the start
	doomed          [][]byte // keys a sweep step found fresh
	last            []byte   // the last key a sweep step examined

	stopSweep context.CancelFunc
	sweeper   sync.WaitGroup
}

type statements struct {
	begin, commit, rollback  *sql.Stmt
	load, swept              *sql.Stmt
	insert, update           *sql.Stmt
	scanFirst, scanNext      *sql.Stmt
	remove, mark, has, count *sql.Stmt
}

// An entry is one key's state during a transaction.
type entry struct {
	key    string
	st     driver.State
	now    int64 // the key's clock: the host's, or later if the key has seen later
	exists bool  // the key has a row
	dirty  bool  // st changed
}

const (
	unit = time.Microsecond
	// Every sweepEvery rows written, a write transaction examines twice as
	// many rows, in key order from where the last one stopped, and deletes
	// those that are fresh: a row is examined again after at most half as
	// many rows written as there are rows, and the look costs a
	// transaction that finds nothing a read of a page or two, once in
	// sweepEvery.
	sweepEvery = 16
	// sweepChunk is how many rows one transaction of Sweep examines, so
	// that admissions interleave with a long sweep.
	sweepChunk = 512
)

// Open opens the database file at path, creating it and its schema if they
// do not exist, and returns a Store on it. The file is put in WAL mode; it
// must be on a local disk (see docs/sqlite.md). Errors are *Error values
// matching ErrNotDatabase, ErrReadOnly, ErrLocked, ErrNewerSchema or
// ErrCorrupt where the cause is one of those.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlitestore: Open: empty path")
	}
	busy := opts.BusyTimeout
	if busy == 0 {
		busy = DefaultBusyTimeout
	}
	if busy < 0 || busy > math.MaxInt32*time.Millisecond {
		return nil, fmt.Errorf("sqlitestore: Options.BusyTimeout must be between 0 and %v, got %v", math.MaxInt32*time.Millisecond, opts.BusyTimeout)
	}
	every := opts.SweepInterval
	if every == 0 {
		every = time.Minute
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, wrapErr("open", path, err)
	}
	if err := checkFile(abs); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(abs, busy, opts.FullSync))
	if err != nil {
		return nil, wrapErr("open", abs, err)
	}
	// One connection: SQLite has one writer at a time, and every operation
	// of a Store writes. More connections would only contend for the lock
	// inside SQLite, whose busy handler sleeps, instead of queueing here.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	s := &Store{
		path:  abs,
		busy:  busy,
		now:   opts.Now,
		db:    db,
		sem:   writers.open(abs),
		done:  make(chan struct{}),
		index: make(map[string]int),

		checkpointEvery: checkpointEvery,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := s.init(context.Background()); err != nil {
		s.closeDB()
		writers.close(abs)
		return nil, wrapErr("open", abs, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopSweep = cancel
	if every > 0 {
		s.sweeper.Add(1)
		go s.sweepEvery(ctx, every)
	}
	return s, nil
}

// checkFile refuses, before SQLite opens it, a path that is a directory
// and a file this process may not write: SQLite would open the latter
// read-only and could leave -wal and -shm files, owned by this process's
// user, that then lock the file's owner out.
func checkFile(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // created by SQLite; classify explains a failure
	case err != nil:
		return wrapErr("open", path, err)
	case fi.IsDir():
		return &Error{Op: "open", Path: path, Err: errors.New("is a directory"), kind: ErrNotDatabase}
	}
	// Asked without opening the file: closing a descriptor of it would
	// drop the POSIX locks of this process's other connections to it.
	return wrapErr("open", path, writable(path, fi))
}

// dsn returns the driver's name for the file at path: a file: URI, so that
// any byte of the path reaches SQLite intact, with the pragmas every
// connection runs.
func dsn(path string, busy time.Duration, fullSync bool) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(path)}
	if !strings.HasPrefix(u.Path, "/") {
		u.Path = "/" + u.Path // a Windows drive letter
	}
	sync := "NORMAL"
	if fullSync {
		sync = "FULL"
	}
	ms := (busy + time.Millisecond - 1) / time.Millisecond
	q := url.Values{}
	q.Add("_pragma", "busy_timeout("+strconv.FormatInt(int64(ms), 10)+")")
	q.Add("_pragma", "synchronous("+sync+")")
	// The store checkpoints the WAL itself (see checkpoint).
	q.Add("_pragma", "wal_autocheckpoint(0)")
	// Keep the WAL file from staying large after a burst.
	q.Add("_pragma", "journal_size_limit(67108864)")
	u.RawQuery = q.Encode()
	return u.String()
}

func (s *Store) init(ctx context.Context) error {
	c, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	s.conn = c
	// Processes opening a new file together may find SQLite refusing the
	// switch to WAL mode with SQLITE_BUSY at once, without waiting (it
	// would deadlock otherwise): try again, as for the write lock.
	deadline := time.Now().Add(s.busy)
	for sleep := retryFirst; ; sleep = min(2*sleep, retryMost) {
		err := prepareFile(ctx, c)
		if err == nil || !isBusy(err) || time.Now().Add(sleep).After(deadline) {
			if err != nil {
				return err
			}
			break
		}
		time.Sleep(sleep)
	}
	// From now on the store waits for the write lock itself (see begin);
	// SQLite's own busy handler served the statements above.
	if _, err := c.ExecContext(ctx, "PRAGMA busy_timeout = 0"); err != nil {
		return err
	}
	for _, q := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&s.stmt.begin, "BEGIN IMMEDIATE"},
		{&s.stmt.commit, "COMMIT"},
		{&s.stmt.rollback, "ROLLBACK"},
		{&s.stmt.load, `SELECT tat, paused, gen, seen, quotas FROM buckets WHERE key = ?1`},
		{&s.stmt.swept, `SELECT swept FROM clock WHERE id = 0`},
		{&s.stmt.insert, `INSERT INTO buckets (key, tat, paused, gen, seen, fresh_at, quotas)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)`},
		{&s.stmt.update, `UPDATE buckets SET tat = ?2, paused = ?3, gen = ?4, seen = ?5, fresh_at = ?6, quotas = ?7
			WHERE key = ?1`},
		{&s.stmt.scanFirst, `SELECT key, fresh_at FROM buckets ORDER BY key LIMIT ?1`},
		{&s.stmt.scanNext, `SELECT key, fresh_at FROM buckets WHERE key > ?1 ORDER BY key LIMIT ?2`},
		{&s.stmt.remove, `DELETE FROM buckets WHERE key = ?1 AND fresh_at <= ?2`},
		{&s.stmt.mark, `UPDATE clock SET swept = max(swept, ?1) WHERE id = 0`},
		{&s.stmt.has, `SELECT count(*) FROM buckets WHERE key = ?1`},
		{&s.stmt.count, `SELECT count(*) FROM buckets`},
	} {
		if *q.stmt, err = c.PrepareContext(ctx, q.sql); err != nil {
			return err
		}
	}
	return nil
}

// prepareFile brings the file's schema up to date, then puts it in WAL
// mode: migrate refuses a file that is not ours before it writes anything,
// so such a file is left as it was, journal mode included.
func prepareFile(ctx context.Context, c *sql.Conn) error {
	if err := migrate(ctx, c); err != nil {
		return err
	}
	var mode string
	if err := c.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return err
	}
	if mode != "wal" {
		return fmt.Errorf("journal mode is %q: WAL mode could not be enabled (is the file on a network file system?)", mode)
	}
	return nil
}

// clock returns the host clock in ticks.
func (s *Store) clock() int64 { return s.now().UnixMicro() }

func (s *Store) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return bucket.ErrClosed
	}
	if s.closed.Load() {
		<-s.sem
		return bucket.ErrClosed
	}
	return nil
}

func (s *Store) release() { <-s.sem }

// txn runs fn in one BEGIN IMMEDIATE transaction, with the host clock read
// once the write lock is held: in lock order, across processes, the clock
// never runs backwards unless the host's does. If fn fails or the commit
// does, nothing fn did is kept.
func (s *Store) txn(ctx context.Context, op string, fn func(host int64) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	if err := s.begin(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return wrapErr(op, s.path, err)
	}
	bg := context.Background()
	committed := false
	defer func() {
		if !committed {
			// fn failed, the commit did, or fn panicked: never leave the
			// connection inside a transaction. This fails harmlessly if
			// SQLite already rolled back.
			s.stmt.rollback.ExecContext(bg)
		}
	}()
	if err := fn(s.clock()); err != nil {
		return wrapErr(op, s.path, err)
	}
	if _, err := s.stmt.commit.ExecContext(bg); err != nil {
		return wrapErr(op, s.path, err)
	}
	committed = true
	if s.pages >= s.checkpointEvery {
		s.checkpoint()
	}
	return nil
}

// checkpointEvery is how many rows a store writes between the checkpoints
// it runs, about as many pages of WAL.
const checkpointEvery = 1000

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
			return bucket.ErrClosed
		}
		sleep = min(2*sleep, retryMost)
	}
}

// load reads key's row into e, at host time host.
func (s *Store) load(e *entry, key string, host int64) error {
	e.key, e.dirty = key, false
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
// state is fresh needs none. A row that has become fresh is still written:
// deleting it is the sweep's, which records the time it judged by.
func (s *Store) save(e *entry) error {
	if !e.dirty {
		return nil
	}
	fresh := driver.FreshAt(&e.st)
	if !e.exists && fresh <= e.now {
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
// first if cursor is nil), deletes those fresh at now, and returns the
// cursor to continue from, nil once the last row was examined, and how
// many rows it deleted. The cursor's memory is reused.
func (s *Store) sweepStep(cursor []byte, now int64, n int) ([]byte, int, error) {
	bg := context.Background()
	var rows *sql.Rows
	var err error
	if cursor == nil {
		rows, err = s.stmt.scanFirst.QueryContext(bg, n)
	} else {
		rows, err = s.stmt.scanNext.QueryContext(bg, cursor, n)
	}
	if err != nil {
		return cursor, 0, err
	}
	defer rows.Close()
	examined := 0
	s.doomed = s.doomed[:0]
	for rows.Next() {
		var (
			key   sql.RawBytes
			fresh int64
		)
		if err := rows.Scan(&key, &fresh); err != nil {
			return cursor, 0, err
		}
		examined++
		s.last = append(s.last[:0], key...)
		if fresh <= now {
			i := len(s.doomed)
			if i < cap(s.doomed) {
				s.doomed = s.doomed[:i+1]
			} else {
				s.doomed = append(s.doomed, nil)
			}
			s.doomed[i] = append(s.doomed[i][:0], key...)
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
	for _, key := range s.doomed {
		if _, err := s.stmt.remove.ExecContext(bg, key, now); err != nil {
			return cursor, 0, err
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

// Admit implements driver.Backend. It blocks while other operations of the
// Store run, and for up to Options.BusyTimeout while other processes hold
// the file's write lock; ctx ends both waits. An invalid request fails
// without touching the file.
//
// Concurrent calls share transactions: a call that finds no transaction of
// admissions under way runs one; calls that arrive meanwhile queue, and
// the first of them runs the next transaction for all of them (up to
// maxCombined), deciding them in arrival order as AdmitBatch would. Alone,
// a call is one transaction; among many, it costs a fraction of one.
func (s *Store) Admit(ctx context.Context, req driver.Request) (driver.Decision, error) {
	if s.closed.Load() {
		return driver.Decision{}, bucket.ErrClosed
	}
	if err := req.Validate(); err != nil {
		return driver.Decision{}, err
	}
	c := callPool.Get().(*call)
	c.req = req
	s.mu.Lock()
	if !s.leading {
		s.leading = true
		s.mu.Unlock()
		s.lead(ctx, c)
	} else {
		s.queue = append(s.queue, c)
		s.mu.Unlock()
		var decided bool
		select {
		case decided = <-c.done:
		case <-ctx.Done():
			if s.dequeue(c) {
				c.reset()
				return driver.Decision{}, ctx.Err()
			}
			decided = <-c.done // already taken: its outcome is coming
		}
		if !decided {
			s.lead(ctx, c)
		}
	}
	d, err := c.d, c.err
	c.reset()
	return d, err
}

// maxCombined is the most Admit calls one transaction decides.
const maxCombined = 256

// maxKept is the most keys of a batch whose scratch memory a store keeps
// for the next batch.
const maxKept = 1024

// A call is an Admit waiting in the queue.
type call struct {
	req  driver.Request
	d    driver.Decision
	err  error
	done chan bool // true: d and err are set; false: the call leads the next transaction
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan bool, 1)} }}

func (c *call) reset() {
	*c = call{done: c.done}
	callPool.Put(c)
}

// dequeue removes c from the queue and reports whether it was there.
func (s *Store) dequeue(c *call) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.queue, c); i >= 0 {
		s.queue = slices.Delete(s.queue, i, i+1)
		return true
	}
	return false
}

// lead decides first and the calls queued behind it in one transaction,
// then passes the lead to the next call queued, if any. The calls queued
// join once the write lock is held: while it is awaited they stay in the
// queue, free to leave it if their context ends.
func (s *Store) lead(ctx context.Context, first *call) {
	calls := append(s.calls[:0], first)
	batch := s.combined[:0]
	began := false
	err := s.txn(ctx, "admit", func(host int64) error {
		began = true
		calls = s.takeQueued(calls)
		for _, c := range calls {
			batch = append(batch, driver.Admission{Request: c.req})
		}
		return s.decide(host, batch)
	})
	if !began && err != nil && !(ctx.Err() != nil && errors.Is(err, ctx.Err())) {
		// The transaction could not begin (the lock stayed taken, the file
		// failed): the calls queued meanwhile would meet the same.
		calls = s.takeQueued(calls)
	}
	for i, c := range calls {
		c.d, c.err = driver.Decision{}, err // rolled back: nothing was admitted
		if err == nil {
			c.d, c.err = batch[i].Decision, batch[i].Err
		}
	}
	for _, c := range calls[1:] {
		c.done <- true
	}
	clear(batch) // keep no caller's limits alive
	s.calls, s.combined = calls[:0], batch[:0]

	s.mu.Lock()
	var next *call
	if len(s.queue) > 0 {
		next = s.queue[0]
		s.queue = s.queue[:copy(s.queue, s.queue[1:])]
	} else {
		s.leading = false
	}
	s.mu.Unlock()
	if next != nil {
		next.done <- false
	}
}

// takeQueued moves the calls queued, up to a transaction's worth, to the
// end of calls.
func (s *Store) takeQueued(calls []*call) []*call {
	s.mu.Lock()
	n := min(len(s.queue), maxCombined-len(calls))
	calls = append(calls, s.queue[:n]...)
	s.queue = s.queue[:copy(s.queue, s.queue[n:])]
	s.mu.Unlock()
	return calls
}

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
			a.Err = bucket.ErrClosed
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
		d, err := driver.Decide(&e.st, &a.Request, unit, e.now)
		if err != nil {
			return err
		}
		a.Decision = d
		e.dirty = e.dirty || d.Allowed // a refusal changes nothing worth writing
	}
	for i := range s.entries {
		if err := s.save(&s.entries[i]); err != nil {
			return err
		}
	}
	return s.sweepDue(host)
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

// Refund implements driver.Backend.
func (s *Store) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	if s.closed.Load() {
		return bucket.ErrClosed
	}
	if !d.Allowed {
		return nil
	}
	if err := req.Validate(); err != nil {
		return err
	}
	return s.txn(ctx, "refund", func(host int64) error {
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
		return bucket.ErrClosed
	}
	if key == "" {
		return bucket.ErrEmptyKey
	}
	if d <= 0 {
		return nil
	}
	ticks := (int64(min(d, bucket.MaxDuration)) + int64(unit) - 1) / int64(unit)
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

// Sweep deletes the rows of every key whose bucket is fresh (guarantee 8).
// It examines every row, a chunk of rows per transaction so that
// admissions run in between; the background sweep (Options.SweepInterval)
// calls it.
func (s *Store) Sweep(ctx context.Context) error {
	var cursor []byte
	for {
		err := s.txn(ctx, "sweep", func(host int64) error {
			var err error
			cursor, _, err = s.sweepStep(cursor, host, sweepChunk)
			return err
		})
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
			s.Sweep(ctx) // a failure (a long lock) is retried at the next tick
		case <-ctx.Done():
			return
		}
	}
}

// Has reports whether the file holds a row for key. Like every operation
// it takes the file's write lock.
func (s *Store) Has(ctx context.Context, key string) (bool, error) {
	n, err := s.query(ctx, "has", s.stmt.has, []byte(key))
	return n > 0, err
}

// Len returns the number of keys the file holds rows for. It counts every
// row, holding the file's write lock meanwhile.
func (s *Store) Len(ctx context.Context) (int, error) {
	n, err := s.query(ctx, "len", s.stmt.count)
	return int(n), err
}

func (s *Store) query(ctx context.Context, op string, stmt *sql.Stmt, args ...any) (int64, error) {
	if s.closed.Load() {
		return 0, bucket.ErrClosed
	}
	var n int64
	err := s.txn(ctx, op, func(int64) error {
		return stmt.QueryRowContext(context.Background(), args...).Scan(&n)
	})
	return n, err
}

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Close stops the background sweep, waits for the operation in progress
// and closes the file. Later calls return bucket.ErrClosed. It is
// idempotent.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.done)
	s.stopSweep()
	s.sweeper.Wait()
	s.sem <- struct{}{} // wait for the operation in progress
	err := s.closeDB()
	<-s.sem
	writers.close(s.path)
	return wrapErr("close", s.path, err)
}

func (s *Store) closeDB() error {
	var errs []error
	for _, st := range []*sql.Stmt{
		s.stmt.begin, s.stmt.commit, s.stmt.rollback, s.stmt.load, s.stmt.swept, s.stmt.insert,
		s.stmt.update, s.stmt.scanFirst, s.stmt.scanNext, s.stmt.remove, s.stmt.mark,
		s.stmt.has, s.stmt.count,
	} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
	}
	errs = append(errs, s.db.Close())
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
	_ io.Closer           = (*Store)(nil)
)
