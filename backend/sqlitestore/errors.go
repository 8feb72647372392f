package sqlitestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors callers branch on. Every failure of the database is an *Error
// that matches one of these with errors.Is when its cause is known.
var (
	// ErrLocked matches an operation that waited longer than
	// Options.BusyTimeout for another connection's write lock.
	ErrLocked = errors.New("sqlitestore: database locked for longer than the busy timeout")
	// ErrReadOnly matches a database that cannot be written: a read-only
	// file, a directory where the file or its -wal and -shm companions
	// cannot be created, a read-only file system.
	ErrReadOnly = errors.New("sqlitestore: database is read-only")
	// ErrNotDatabase matches a file that is not an SQLite database, or an
	// SQLite database that belongs to another program.
	ErrNotDatabase = errors.New("sqlitestore: not a sqlitestore database")
	// ErrNewerSchema matches a database whose schema was written by a newer
	// version of this package. The file is left untouched.
	ErrNewerSchema = errors.New("sqlitestore: database schema is newer than this program supports")
	// ErrCorrupt matches a database SQLite reports as malformed, or a row
	// whose state cannot be decoded.
	ErrCorrupt = errors.New("sqlitestore: database is corrupt")
	// ErrFull matches a write that found no room: the file system is full,
	// or a file of the database reached the process's file size limit
	// (RLIMIT_FSIZE). The operation changed nothing and may be retried
	// once there is room; refusals, which write nothing, are still
	// answered meanwhile.
	ErrFull = errors.New("sqlitestore: no room for a write")
	// ErrMoved matches an operation that found the database file removed,
	// renamed or replaced (another file renamed over it) since the Store
	// opened it. The operation changed nothing. The Store has let go of
	// the old file and opened the one now at the path, creating it if
	// there is none, as a process started now would; if that failed, the
	// error also matches why (ErrNotDatabase, ...) and the next operation
	// tries again. See docs/sqlite.md, "Faults".
	ErrMoved = errors.New("sqlitestore: database file removed or replaced while open")
)

// An Error is a failed database operation: what the Store was doing, on
// which file, and why. It matches the sentinel naming its cause (ErrLocked,
// ErrReadOnly, ErrNotDatabase, ErrNewerSchema, ErrCorrupt, ErrFull,
// ErrMoved) with errors.Is, and unwraps to the underlying error (often a
// *sqlite.Error, or for ErrMoved the *Error of opening the path again).
type Error struct {
	Op   string // "open", "admit", "refund", "pause", "sweep", ...
	Path string // the database file
	Err  error  // the underlying error

	kind error // one of the sentinels above, or nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("sqlitestore: ")
	b.WriteString(e.Op)
	b.WriteString(" ")
	b.WriteString(e.Path)
	e.cause(&b)
	return b.String()
}

// cause writes ": kind: underlying error", with an *Error of the same
// file underneath (ErrMoved's, of opening it again) told as "op: ...".
func (e *Error) cause(b *strings.Builder) {
	if e.kind != nil {
		b.WriteString(": ")
		b.WriteString(strings.TrimPrefix(e.kind.Error(), "sqlitestore: "))
	}
	b.WriteString(": ")
	if in, ok := e.Err.(*Error); ok && in.Path == e.Path {
		b.WriteString(in.Op)
		in.cause(b)
		return
	}
	b.WriteString(e.Err.Error())
}

// Unwrap returns the sentinel naming the cause, if known, and the
// underlying error.
func (e *Error) Unwrap() []error {
	if e.kind == nil {
		return []error{e.Err}
	}
	return []error{e.kind, e.Err}
}

// wrapErr returns err as an *Error of op on path, classified by its SQLite
// result code or its system error.
func wrapErr(op, path string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Op == "" {
			e.Op = op
		}
		if e.Path == "" {
			e.Path = path
		}
		return err
	}
	kind, err := classify(path, err)
	return &Error{Op: op, Path: path, Err: err, kind: kind}
}

// isBusy reports whether err is SQLite's SQLITE_BUSY: another connection
// holds the lock.
func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// classify returns the sentinel naming err's cause, if known, and err,
// explained where SQLite's message is not enough.
func classify(path string, err error) (kind, explained error) {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return ErrLocked, err
		case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM:
			return ErrReadOnly, err
		case sqlite3.SQLITE_NOTADB:
			return ErrNotDatabase, err
		case sqlite3.SQLITE_CORRUPT:
			return ErrCorrupt, err
		case sqlite3.SQLITE_FULL:
			return ErrFull, err
		case sqlite3.SQLITE_IOERR:
			// SQLite says SQLITE_FULL for ENOSPC alone; a write cut
			// short by RLIMIT_FSIZE (EFBIG) is an I/O error to it.
			if limit := sizeLimitReached(path); limit != nil {
				return ErrFull, fmt.Errorf("%w: %w", limit, err)
			}
		case sqlite3.SQLITE_CANTOPEN:
			// SQLite says only that it could not open a file: the
			// database, its -wal or its -shm. If the directory is
			// missing or refuses new files, that is why.
			dir := filepath.Dir(path)
			if fi, statErr := os.Stat(dir); statErr != nil || !fi.IsDir() {
				return nil, fmt.Errorf("directory %s does not exist: %w", dir, errors.Join(fs.ErrNotExist, err))
			}
			if !dirWritable(dir) {
				return ErrReadOnly, fmt.Errorf("no file can be created in %s: %w", dir, err)
			}
		}
		return nil, err
	}
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return ErrReadOnly, err
	}
	return nil, err
}

// dirWritable reports whether a file can be created in dir. It is asked
// only after a failure, so it may cost a file creation.
func dirWritable(dir string) bool {
	f, err := os.CreateTemp(dir, ".sqlitestore-probe-*")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}
