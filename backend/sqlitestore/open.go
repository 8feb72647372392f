package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
)

// Open opens the database file at path, creating it and its schema if they
// do not exist, and returns a Store on it. The file is put in WAL mode; it
// must be on a local disk (see docs/sqlite.md). Errors are *Error values
// matching ErrNotDatabase, ErrReadOnly, ErrLocked, ErrNewerSchema,
// ErrCorrupt or ErrFull where the cause is one of those.
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
	checkpoints := opts.CheckpointEvery
	if checkpoints == 0 {
		checkpoints = DefaultCheckpointEvery
	}
	if checkpoints < 0 {
		return nil, fmt.Errorf("sqlitestore: Options.CheckpointEvery must not be negative, got %d", checkpoints)
	}
	every := opts.SweepInterval
	if every == 0 {
		every = time.Minute
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, wrapErr("open", path, err)
	}
	s := &Store{
		path:  abs,
		dsn:   dsn(abs, busy, opts.FullSync),
		busy:  busy,
		now:   opts.Now,
		sem:   writers.open(abs),
		done:  make(chan struct{}),
		index: make(map[string]int),

		checkpointEvery: checkpoints,
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.admits = coalesce.New(coalesce.Config[driver.Request, driver.Decision]{
		Trips:    1,
		MaxBatch: maxCombined,
		Run:      s.admitCalls,
	})
	if err := s.connect(); err != nil {
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

// connect opens the file at the store's path, creating it and its schema
// if need be, prepares the statements and remembers which file it opened
// (see moved.go). On failure it leaves the store without a database.
func (s *Store) connect() error {
	if err := checkFile(s.path); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", s.dsn)
	if err != nil {
		return err
	}
	// One connection: SQLite has one writer at a time, and every operation
	// of a Store writes. More connections would only contend for the lock
	// inside SQLite, whose busy handler sleeps, instead of queueing here.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	s.db = db
	if err := s.init(context.Background()); err != nil {
		s.closeDB()
		return err
	}
	s.remember()
	return nil
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
		{&s.stmt.scanFirst, `SELECT key, fresh_at, ` + leasedUntil("?2") + ` FROM buckets ORDER BY key LIMIT ?1`},
		{&s.stmt.scanNext, `SELECT key, fresh_at, ` + leasedUntil("?3") + ` FROM buckets WHERE key > ?1 ORDER BY key LIMIT ?2`},
		{&s.stmt.remove, `DELETE FROM buckets WHERE key = ?1 AND fresh_at <= ?2`},
		{&s.stmt.mark, `UPDATE clock SET swept = max(swept, ?1) WHERE id = 0`},
		{&s.stmt.leases, `SELECT id, expires FROM leases WHERE key = ?1`},
		{&s.stmt.putLease, `INSERT INTO leases (key, id, expires) VALUES (?1, ?2, ?3)
			ON CONFLICT (key, id) DO UPDATE SET expires = max(expires, excluded.expires)`},
		{&s.stmt.prune, `DELETE FROM leases WHERE key = ?1 AND expires <= ?2`},
		{&s.stmt.renew, `UPDATE leases SET expires = max(expires, ?4) WHERE key = ?1 AND id = ?2 AND expires > ?3`},
		{&s.stmt.release, `DELETE FROM leases WHERE key = ?1 AND id = ?2`},
		{&s.stmt.expire, `DELETE FROM leases WHERE expires <= ?1`},
	} {
		if *q.stmt, err = c.PrepareContext(ctx, q.sql); err != nil {
			return err
		}
	}
	return nil
}

// leasedUntil returns the column of the sweep's scans that gives, for a
// row fresh at the parameter now, the latest expiry of its key's leases
// (NULL if it has none); for other rows NULL, looked up for nothing.
func leasedUntil(now string) string {
	return `CASE WHEN fresh_at <= ` + now + ` THEN (SELECT max(expires) FROM leases WHERE leases.key = buckets.key) END`
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
