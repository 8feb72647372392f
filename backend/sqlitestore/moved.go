package sqlitestore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// The database file can be removed, renamed, or replaced by another file
// renamed over it, while stores have it open. SQLite carries on with the
// file it opened, nameless or elsewhere now, while every process that
// opens the path from then on gets another file: the stores would stop
// sharing their buckets, silently. So a store checks, at most once per
// movedCheck of its clock and after any transaction that fails, that its
// path still names the file it opened; one that finds otherwise lets go
// of the old file and opens the path, as a process started then would.
// The operation that finds it fails with ErrMoved, having changed
// nothing; the next ones run on the new file.
//
// Letting go has to mind the -wal and -shm files, which SQLite names after
// the path, not after the file: left there, they would be paired with the
// next file at the path, whose pages they do not describe (a corrupt
// database), and other processes may append to them until they notice the
// move in turn. So the store first checkpoints the old file's WAL into it
// and empties it, which leaves the old file complete wherever it is now,
// then removes the two from the path if they are still its own (the
// processes that have them open keep them), and only then opens the path.

// movedCheck is how often, at most, a store checks that its path names
// the file it has open: a stat of the path costs about as much as a
// tenth of an admission, too much for every transaction.
const movedCheck = 100 * time.Millisecond

// opened identifies the files a store's connection has open.
type opened struct {
	db, wal, shm fs.FileInfo // nil if it could not be read
	checked      int64       // the store's clock at the last check, in ticks
}

// remember records the files the store's connection has just opened: in
// WAL mode SQLite has the -wal and -shm files open from the first read
// until the connection closes, and no one removes them meanwhile (SQLite
// removes them when the last connection closes).
func (s *Store) remember() {
	s.file = opened{checked: s.clock()}
	var swept int64
	s.stmt.swept.QueryRowContext(context.Background()).Scan(&swept) // a first read of a new file opens them
	s.file.db, _ = os.Stat(s.path)
	s.file.wal, _ = os.Stat(s.path + "-wal")
	s.file.shm, _ = os.Stat(s.path + "-shm")
}

// checkDue reports whether the check of the path is due at host time
// host, and if so counts it as done. A clock that runs back makes it due.
func (s *Store) checkDue(host int64) bool {
	if since := host - s.file.checked; since >= 0 && since < int64(movedCheck/unit) {
		return false
	}
	s.file.checked = host
	return true
}

// moved reports whether the store's path no longer names the file its
// connection has open. A path it cannot look at (a directory it may no
// longer search) has not moved, as far as it can tell.
func (s *Store) moved() bool {
	if s.file.db == nil {
		return false
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
	}
	return !os.SameFile(fi, s.file.db)
}

// follow lets go of the file the store has open, which its path no longer
// names, and opens the path. It returns an error matching ErrMoved, and
// also the reason if the path could not be opened: the store then has no
// database, and its next transaction tries again.
func (s *Store) follow() error {
	s.letGo() // what closing the old file says matters no more
	err := s.connect()
	if err == nil {
		err = errors.New("the file now at the path is open in its place")
	} else {
		err = wrapErr("open", s.path, err)
	}
	return &Error{Path: s.path, Err: err, kind: ErrMoved}
}

// letGo closes the store's database, whose path names another file or
// none now, leaving the old file complete and no WAL or shared memory of
// it at the path. It returns the error of closing.
func (s *Store) letGo() error {
	bg := context.Background()
	// Wait a little for other writers: one that has not noticed yet may
	// be committing. What it commits after the checkpoint it checkpoints
	// itself when it lets go in turn. A checkpoint that fails leaves the
	// old file with what earlier ones copied into it, without its latest
	// admissions; the path names it no more.
	if _, err := s.conn.ExecContext(bg, "PRAGMA busy_timeout = 20"); err == nil {
		s.conn.ExecContext(bg, "PRAGMA wal_checkpoint(TRUNCATE)")
	}
	for _, f := range []struct {
		name string
		fi   fs.FileInfo
	}{{s.path + "-wal", s.file.wal}, {s.path + "-shm", s.file.shm}} {
		if fi, err := os.Stat(f.name); err == nil && f.fi != nil && os.SameFile(fi, f.fi) {
			os.Remove(f.name)
		}
	}
	s.cursor, s.written, s.pages = nil, 0, 0
	return s.closeDB()
}
