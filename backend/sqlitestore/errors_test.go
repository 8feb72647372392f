package sqlitestore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

var lim = bucket.PerSecond(10).WithBurst(5).WithQuota(100, time.Hour)

// rawDB opens path with the driver directly, as another program would.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// holdLock takes the write lock of the file at path on a connection of
// its own, as another process would, and returns that connection: roll
// back on it to let go.
func holdLock(t *testing.T, path string) *sql.Conn {
	t.Helper()
	ctx := context.Background()
	holder, err := rawDB(t, path).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Close() })
	if _, err := holder.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	return holder
}

// wantErr fails t unless err matches target and reads as this package's.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error = %v, want one matching %v", what, err, target)
	}
	if !strings.HasPrefix(err.Error(), "sqlitestore: ") {
		t.Errorf("%s: error %q does not start with \"sqlitestore: \"", what, err)
	}
	var e *sqlitestore.Error
	if !errors.As(err, &e) {
		t.Errorf("%s: error %v is not a *sqlitestore.Error", what, err)
	}
}

func TestOpenNotADatabase(t *testing.T) {
	dir := t.TempDir()
	text := []byte(strings.Repeat("this is a text file, not a database\n", 200))
	path := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(path, text, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := sqlitestore.Open(path, sqlitestore.Options{})
	if err == nil {
		s.Close()
		t.Fatal("Open of a text file succeeded")
	}
	wantErr(t, "Open(text file)", err, sqlitestore.ErrNotDatabase)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, text) {
		t.Error("Open of a text file changed it")
	}

	// An SQLite database of another program is not adopted either.
	other := filepath.Join(dir, "other.db")
	db := rawDB(t, other)
	if _, err := db.Exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sqlitestore.Open(other, sqlitestore.Options{})
	wantErr(t, "Open(another program's database)", err, sqlitestore.ErrNotDatabase)
	if after, _ := os.ReadFile(other); !bytes.Equal(after, before) {
		t.Error("Open of another program's database changed the file (its journal mode?)")
	}
	if _, err := os.Stat(other + "-wal"); err == nil {
		t.Error("Open of another program's database made it a WAL file")
	}
	db = rawDB(t, other)
	var n int
	if err := db.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil || n != 1 {
		t.Errorf("another program's database holds %d objects (%v), want its 1 table untouched", n, err)
	}

	// A directory is not a database file.
	_, err = sqlitestore.Open(dir, sqlitestore.Options{})
	wantErr(t, "Open(directory)", err, sqlitestore.ErrNotDatabase)
	if err != nil && !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("Open(directory) = %v, want it to say the path is a directory", err)
	}
	// A file in a directory that does not exist.
	_, err = sqlitestore.Open(filepath.Join(dir, "missing", "b.db"), sqlitestore.Options{})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(fmt.Sprint(err), "does not exist") {
		t.Errorf("Open(file in a missing directory) = %v, want an error matching fs.ErrNotExist", err)
	}
}

// TestFailedWriteAdmitsNothing: when writing an admission fails (here a
// trigger stands in for a full disk), Admit reports the error and no
// admission, as nothing was committed.
func TestFailedWriteAdmitsNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{SweepInterval: -1})
	db := rawDB(t, path)
	if _, err := db.Exec(`CREATE TRIGGER full BEFORE INSERT ON buckets WHEN NEW.key = CAST('full' AS BLOB)
		BEGIN SELECT RAISE(ABORT, 'database or disk is full (simulated)'); END`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := s.Admit(ctx, driver.Request{Key: "full", Limit: backendtest.Limit(lim), Cost: 1})
	if err == nil {
		t.Fatal("Admit succeeded although its write failed")
	}
	if d.Allowed || d.Booking != (driver.Booking{}) {
		t.Errorf("Admit = %+v with error %v: an admission that was rolled back", d, err)
	}
	l, err := bucket.NewLimiter(s, lim)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := l.Allow(ctx, "full"); ok || err == nil {
		t.Errorf("Limiter.Allow = %v, %v; want false and the error", ok, err)
	}
	if has, err := s.Has(ctx, "full"); has || err != nil {
		t.Errorf("Has(full) = %v, %v after a failed write", has, err)
	}
}

func TestOpenNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	open(t, path, sqlitestore.Options{}).Close()
	db := rawDB(t, path)
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	_, err := sqlitestore.Open(path, sqlitestore.Options{})
	wantErr(t, "Open(schema version 99)", err, sqlitestore.ErrNewerSchema)
}

func TestOpenIsIdempotentAndConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	var wg sync.WaitGroup
	stores := make([]*sqlitestore.Store, 8)
	errs := make([]error, len(stores))
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = sqlitestore.Open(path, sqlitestore.Options{}) })
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Fatalf("concurrent Open %d: %v", i, errs[i])
		}
		t.Cleanup(func() { s.Close() })
	}
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(8)), Cost: 1}
	for i, s := range stores {
		if d, err := s.Admit(ctx, r); err != nil || !d.Allowed {
			t.Fatalf("store %d: Admit = %v, %v", i, d.Allowed, err)
		}
	}
	if d, _ := stores[0].Admit(ctx, r); d.Allowed {
		t.Error("9th admission of burst 8 across 8 stores allowed: they do not share the file")
	}
	db := rawDB(t, path)
	var version int
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != sqlitestore.SchemaVersion {
		t.Errorf("user_version = %d (%v), want %d", version, err, sqlitestore.SchemaVersion)
	}
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q (%v), want wal", mode, err)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	const busy = 50 * time.Millisecond
	s := open(t, path, sqlitestore.Options{BusyTimeout: busy})
	patient := open(t, path, sqlitestore.Options{BusyTimeout: time.Minute})
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	if _, err := s.Admit(ctx, r); err != nil {
		t.Fatal(err)
	}

	// Another connection holds the write lock.
	holder := holdLock(t, path)

	start := time.Now()
	_, err := s.Admit(ctx, r)
	wantErr(t, "Admit while locked", err, sqlitestore.ErrLocked)
	if waited := time.Since(start); waited < busy {
		t.Errorf("Admit while locked failed after %v, want after the busy timeout %v", waited, busy)
	}
	wantErr(t, "Refund while locked", s.Refund(ctx, r, driver.Decision{Allowed: true}), sqlitestore.ErrLocked)
	wantErr(t, "Pause while locked", s.Pause(ctx, "k", time.Second), sqlitestore.ErrLocked)
	batch := []driver.Admission{{Request: r}, {Request: driver.Request{Key: "", Limit: backendtest.Limit(lim), Cost: 1}}}
	s.AdmitBatch(ctx, batch)
	wantErr(t, "AdmitBatch while locked", batch[0].Err, sqlitestore.ErrLocked)
	if !errors.Is(batch[1].Err, bucket.ErrEmptyKey) {
		t.Errorf("AdmitBatch while locked: invalid element's error = %v, want ErrEmptyKey", batch[1].Err)
	}

	// A context ends the wait before the busy timeout does.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := patient.Admit(cctx, r); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Admit with a 30ms context while locked = %v, want context.DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("Admit with a 30ms context returned after %v", waited)
	}

	_, err = sqlitestore.Open(path, sqlitestore.Options{BusyTimeout: busy})
	wantErr(t, "Open while locked", err, sqlitestore.ErrLocked)

	// Close ends a wait for the lock: the Admit waiting answers ErrClosed
	// (it would wait out the minute and answer ErrLocked otherwise).
	waiting := make(chan error, 1)
	go func() {
		_, err := patient.Admit(ctx, r)
		waiting <- err
	}()
	for !sqlitestore.Leading(patient) {
		runtime.Gosched()
	}
	patient.Close()
	if err := <-waiting; !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Admit waiting for the lock when the store closed = %v, want bucket.ErrClosed", err)
	}

	if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Admit(ctx, r); err != nil || !d.Allowed {
		t.Errorf("Admit after the lock was released = %v, %v, want allowed", d.Allowed, err)
	}
}

func TestCorruptRow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{})
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	if _, err := s.Admit(ctx, r); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	for _, blob := range [][]byte{{9}, {1, 0x80}, {1, 5, 1, 0}, []byte("garbage")} {
		if _, err := db.Exec("UPDATE buckets SET quotas = ? WHERE key = ?", blob, []byte("k")); err != nil {
			t.Fatal(err)
		}
		_, err := s.Admit(ctx, r)
		wantErr(t, "Admit of a corrupt row", err, sqlitestore.ErrCorrupt)
	}
	if _, err := db.Exec("DELETE FROM clock"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Admit(ctx, driver.Request{Key: "other", Limit: backendtest.Limit(lim), Cost: 1})
	wantErr(t, "Admit without a clock row", err, sqlitestore.ErrCorrupt)
}

func TestOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		path string
		opts sqlitestore.Options
	}{
		{"empty path", "", sqlitestore.Options{}},
		{"negative busy timeout", filepath.Join(dir, "a.db"), sqlitestore.Options{BusyTimeout: -time.Second}},
		{"huge busy timeout", filepath.Join(dir, "a.db"), sqlitestore.Options{BusyTimeout: 1000 * time.Hour}},
	} {
		s, err := sqlitestore.Open(tt.path, tt.opts)
		if err == nil {
			s.Close()
			t.Errorf("Open with %s succeeded, want an error", tt.name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "sqlitestore: ") {
			t.Errorf("Open with %s: error %q does not start with \"sqlitestore: \"", tt.name, err)
		}
	}
	// A missing directory is not a read-only one.
	_, err := sqlitestore.Open(filepath.Join(dir, "missing", "b.db"), sqlitestore.Options{})
	if err == nil || errors.Is(err, sqlitestore.ErrReadOnly) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Open in a missing directory = %v, want an error saying the directory does not exist", err)
	}
	// Any byte of a path reaches the file system intact.
	odd := filepath.Join(dir, "a?b#c%20d é.db")
	open(t, odd, sqlitestore.Options{FullSync: true, SweepInterval: -1})
	if _, err := os.Stat(odd); err != nil {
		t.Errorf("Open(%q) did not create that file: %v", odd, err)
	}
}

func TestClosed(t *testing.T) {
	s, err := sqlitestore.Open(filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	// Close waits for operations in flight and fails those that wait.
	var (
		wg      sync.WaitGroup
		once    sync.Once
		running = make(chan struct{})
	)
	for range 8 {
		wg.Go(func() {
			for {
				_, err := s.Admit(ctx, r)
				if errors.Is(err, bucket.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Admit during Close: %v", err)
					return
				}
				once.Do(func() { close(running) })
			}
		})
	}
	<-running
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Admit(ctx, r); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Admit after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Admit(ctx, driver.Request{}); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("invalid Admit after Close = %v, want ErrClosed", err)
	}
	batch := []driver.Admission{{Request: r}}
	s.AdmitBatch(ctx, batch)
	if !errors.Is(batch[0].Err, bucket.ErrClosed) {
		t.Errorf("AdmitBatch after Close: %v, want ErrClosed", batch[0].Err)
	}
	if err := s.Refund(ctx, r, driver.Decision{Allowed: true}); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Refund after Close = %v, want ErrClosed", err)
	}
	if err := s.Pause(ctx, "k", time.Second); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Pause after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Has(ctx, "k"); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Has after Close = %v, want ErrClosed", err)
	}
	if err := s.Sweep(ctx); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Sweep after Close = %v, want ErrClosed", err)
	}
}

// TestAdmitCancelWhileQueued cancels concurrent admissions, queued behind
// one another for a transaction, while another connection holds the lock:
// each returns its context's error without waiting for the busy timeout,
// and the admissions that follow are exact.
// TestCorruptRowFailsOnlyItsKey: a key whose row cannot be read fails its
// own admissions; the other admissions of the same transaction are decided
// and charged, as they would be alone.
func TestCorruptRowFailsOnlyItsKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{SweepInterval: -1})
	ctx := context.Background()
	if _, err := s.Admit(ctx, driver.Request{Key: "x", Limit: backendtest.Limit(lim), Cost: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := rawDB(t, path).Exec("UPDATE buckets SET quotas = ? WHERE key = ?", []byte("garbage"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	batch := []driver.Admission{
		{Request: driver.Request{Key: "x", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: driver.Request{Key: "y", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: driver.Request{Key: "x", Limit: backendtest.Limit(lim), Cost: 1}},
	}
	s.AdmitBatch(ctx, batch)
	for _, i := range []int{0, 2} {
		wantErr(t, "the corrupt key's admission", batch[i].Err, sqlitestore.ErrCorrupt)
		if batch[i].Decision.Allowed {
			t.Errorf("admission %d of the corrupt key was allowed", i)
		}
	}
	if a := batch[1]; a.Err != nil || !a.Decision.Allowed {
		t.Errorf("the healthy key's admission = %+v, %v; want it allowed", a.Decision, a.Err)
	}
	if has, err := s.Has(ctx, "y"); !has || err != nil {
		t.Errorf("Has(y) = %v, %v: its admission was not charged", has, err)
	}
}

// TestQueuedAdmitLeavesWhileLeaderWaits: an Admit queued behind a call
// that waits for the write lock can still leave when its context ends; it
// joins the transaction only once the lock is held.
func TestQueuedAdmitLeavesWhileLeaderWaits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{BusyTimeout: 3 * time.Second, SweepInterval: -1})
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(100)), Cost: 1}
	holder := holdLock(t, path)
	waitQueue := func(n int) {
		t.Helper()
		for sqlitestore.QueueLen(s) != n {
			time.Sleep(time.Millisecond)
		}
	}
	lctx, cancelLeader := context.WithCancel(ctx)
	results := make(chan error, 3)
	go func() { _, err := s.Admit(lctx, r); results <- err }() // leads, waits for the lock
	for !sqlitestore.Leading(s) {
		time.Sleep(time.Millisecond)
	}
	go func() { _, err := s.Admit(ctx, r); results <- err }() // patient: leads next
	waitQueue(1)
	fctx, cancelFollower := context.WithCancel(ctx)
	follower := make(chan error, 1)
	go func() { _, err := s.Admit(fctx, r); follower <- err }()
	waitQueue(2)
	cancelLeader() // the patient call leads now and waits for the lock in turn
	if err := <-results; !errors.Is(err, context.Canceled) {
		t.Fatalf("the first leader = %v, want context.Canceled", err)
	}
	time.Sleep(20 * time.Millisecond) // the patient call reaches the lock wait
	cancelFollower()
	if err := <-follower; !errors.Is(err, context.Canceled) {
		t.Errorf("the queued Admit whose context ended = %v, want context.Canceled", err)
	}
	if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := <-results; err != nil {
		t.Errorf("the patient Admit = %v, want it decided once the lock was free", err)
	}
}

func TestAdmitCancelWhileQueued(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{BusyTimeout: time.Minute})
	ctx := context.Background()
	lim := bucket.PerHour(1).WithBurst(100)
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	if _, err := s.Admit(ctx, r); err != nil {
		t.Fatal(err)
	}
	holder := holdLock(t, path)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, time.Duration(10+5*i)*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := s.Admit(cctx, r)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Admit %d while locked = %v, want context.DeadlineExceeded", i, err)
			}
			if waited := time.Since(start); waited > 10*time.Second {
				t.Errorf("Admit %d with a %v context returned after %v", i, time.Duration(10+5*i)*time.Millisecond, waited)
			}
		})
	}
	wg.Wait()
	if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// Nothing above was charged: 99 of the burst of 100 remain.
	var allowed atomic.Int64
	for range 16 {
		wg.Go(func() {
			for range 10 {
				d, err := s.Admit(ctx, r)
				if err != nil {
					t.Errorf("Admit: %v", err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 99 {
		t.Errorf("after cancelled admissions, 160 concurrent admissions allowed %d of the 99 left, want 99", n)
	}
}
