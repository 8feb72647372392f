package sqlitestore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	require.NoError(t, err)
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
	require.NoError(t, err)
	t.Cleanup(func() { holder.Close() })
	_, err = holder.ExecContext(ctx, "BEGIN IMMEDIATE")
	require.NoError(t, err)
	return holder
}

// wantErr fails t unless err matches target and reads as this package's.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	require.ErrorIs(t, err, target, what)
	assert.Regexp(t, "^sqlitestore: ", err.Error(), what)
	var e *sqlitestore.Error
	assert.ErrorAs(t, err, &e, what)
}

func TestOpenNotADatabase(t *testing.T) {
	dir := t.TempDir()
	text := []byte(strings.Repeat("this is a text file, not a database\n", 200))
	path := filepath.Join(dir, "notes.txt")
	require.NoError(t, os.WriteFile(path, text, 0o644))
	s, err := sqlitestore.Open(path, sqlitestore.Options{})
	if err == nil {
		s.Close()
	}
	wantErr(t, "Open(text file)", err, sqlitestore.ErrNotDatabase)
	got, _ := os.ReadFile(path)
	assert.True(t, bytes.Equal(got, text), "Open of a text file changed it")

	// An SQLite database of another program is not adopted either.
	other := filepath.Join(dir, "other.db")
	db := rawDB(t, other)
	_, err = db.Exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
	require.NoError(t, err)
	db.Close()
	before, err := os.ReadFile(other)
	require.NoError(t, err)
	_, err = sqlitestore.Open(other, sqlitestore.Options{})
	wantErr(t, "Open(another program's database)", err, sqlitestore.ErrNotDatabase)
	after, _ := os.ReadFile(other)
	assert.True(t, bytes.Equal(after, before), "Open of another program's database changed the file (its journal mode?)")
	assert.NoFileExists(t, other+"-wal", "Open of another program's database made it a WAL file")
	db = rawDB(t, other)
	var n int
	assert.NoError(t, db.QueryRow("SELECT count(*) FROM sqlite_schema").Scan(&n))
	assert.Equal(t, 1, n, "objects in another program's database: want its 1 table untouched")

	// A directory is not a database file.
	_, err = sqlitestore.Open(dir, sqlitestore.Options{})
	wantErr(t, "Open(directory)", err, sqlitestore.ErrNotDatabase)
	assert.ErrorContains(t, err, "is a directory", "Open(directory)")
	// A file in a directory that does not exist.
	_, err = sqlitestore.Open(filepath.Join(dir, "missing", "b.db"), sqlitestore.Options{})
	assert.ErrorIs(t, err, fs.ErrNotExist, "Open(file in a missing directory)")
	assert.ErrorContains(t, err, "does not exist", "Open(file in a missing directory)")
}

// TestFailedWriteAdmitsNothing: when writing an admission fails (here a
// trigger stands in for a full disk), Admit reports the error and no
// admission, as nothing was committed.
func TestFailedWriteAdmitsNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{SweepInterval: -1})
	db := rawDB(t, path)
	_, err := db.Exec(`CREATE TRIGGER full BEFORE INSERT ON buckets WHEN NEW.key = CAST('full' AS BLOB)
		BEGIN SELECT RAISE(ABORT, 'database or disk is full (simulated)'); END`)
	require.NoError(t, err)
	ctx := context.Background()
	d, err := s.Admit(ctx, driver.Request{Key: "full", Limit: backendtest.Limit(lim), Cost: 1})
	require.Error(t, err, "Admit although its write failed")
	assert.False(t, d.Allowed, "Admit whose write was rolled back")
	assert.Zero(t, d.Booking, "Admit whose write was rolled back")
	l, err := bucket.NewLimiter(s, lim)
	require.NoError(t, err)
	ok, err := l.Allow(ctx, "full")
	assert.Error(t, err, "Limiter.Allow")
	assert.False(t, ok, "Limiter.Allow")
	has, err := s.Has(ctx, "full")
	assert.NoError(t, err)
	assert.False(t, has, "Has(full) after a failed write")
}

func TestOpenNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	open(t, path, sqlitestore.Options{}).Close()
	db := rawDB(t, path)
	_, err := db.Exec("PRAGMA user_version = 99")
	require.NoError(t, err)
	_, err = sqlitestore.Open(path, sqlitestore.Options{})
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
		require.NoError(t, errs[i], "concurrent Open %d", i)
		t.Cleanup(func() { s.Close() })
	}
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(8)), Cost: 1}
	for i, s := range stores {
		d, err := s.Admit(ctx, r)
		require.NoError(t, err, "store %d", i)
		require.True(t, d.Allowed, "store %d", i)
	}
	d, _ := stores[0].Admit(ctx, r)
	assert.False(t, d.Allowed, "9th admission of burst 8 across 8 stores allowed: they do not share the file")
	db := rawDB(t, path)
	var version int
	assert.NoError(t, db.QueryRow("PRAGMA user_version").Scan(&version))
	assert.Equal(t, sqlitestore.SchemaVersion, version, "user_version")
	var mode string
	assert.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
	assert.Equal(t, "wal", mode, "journal_mode")
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	const busy = 50 * time.Millisecond
	s := open(t, path, sqlitestore.Options{BusyTimeout: busy})
	patient := open(t, path, sqlitestore.Options{BusyTimeout: time.Minute})
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	_, err := s.Admit(ctx, r)
	require.NoError(t, err)

	// Another connection holds the write lock.
	holder := holdLock(t, path)

	start := time.Now()
	_, err = s.Admit(ctx, r)
	wantErr(t, "Admit while locked", err, sqlitestore.ErrLocked)
	assert.GreaterOrEqual(t, time.Since(start), busy, "Admit while locked failed before the busy timeout")
	wantErr(t, "Refund while locked", s.Refund(ctx, r, driver.Decision{Allowed: true}), sqlitestore.ErrLocked)
	wantErr(t, "Pause while locked", s.Pause(ctx, "k", time.Second), sqlitestore.ErrLocked)
	batch := []driver.Admission{{Request: r}, {Request: driver.Request{Key: "", Limit: backendtest.Limit(lim), Cost: 1}}}
	s.AdmitBatch(ctx, batch)
	wantErr(t, "AdmitBatch while locked", batch[0].Err, sqlitestore.ErrLocked)
	assert.ErrorIs(t, batch[1].Err, bucket.ErrEmptyKey, "AdmitBatch while locked: invalid element")

	// A context ends the wait before the busy timeout does.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = patient.Admit(cctx, r)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "Admit with a 30ms context while locked")
	assert.LessOrEqual(t, time.Since(start), 10*time.Second, "Admit with a 30ms context while locked")

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
	assert.ErrorIs(t, <-waiting, bucket.ErrClosed, "Admit waiting for the lock when the store closed")

	_, err = holder.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err)
	d, err := s.Admit(ctx, r)
	assert.NoError(t, err, "Admit after the lock was released")
	assert.True(t, d.Allowed, "Admit after the lock was released")
}

func TestCorruptRow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{})
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	_, err := s.Admit(ctx, r)
	require.NoError(t, err)
	db := rawDB(t, path)
	for _, blob := range [][]byte{{9}, {1, 0x80}, {1, 5, 1, 0}, []byte("garbage")} {
		_, err := db.Exec("UPDATE buckets SET quotas = ? WHERE key = ?", blob, []byte("k"))
		require.NoError(t, err)
		_, err = s.Admit(ctx, r)
		wantErr(t, "Admit of a corrupt row", err, sqlitestore.ErrCorrupt)
	}
	_, err = db.Exec("DELETE FROM clock")
	require.NoError(t, err)
	_, err = s.Admit(ctx, driver.Request{Key: "other", Limit: backendtest.Limit(lim), Cost: 1})
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
		{"negative checkpoint interval", filepath.Join(dir, "a.db"), sqlitestore.Options{CheckpointEvery: -1}},
	} {
		s, err := sqlitestore.Open(tt.path, tt.opts)
		if !assert.Error(t, err, "Open with %s", tt.name) {
			s.Close()
			continue
		}
		assert.Regexp(t, "^sqlitestore: ", err.Error(), "Open with %s", tt.name)
	}
	// A missing directory is not a read-only one.
	_, err := sqlitestore.Open(filepath.Join(dir, "missing", "b.db"), sqlitestore.Options{})
	assert.ErrorContains(t, err, "does not exist", "Open in a missing directory")
	assert.NotErrorIs(t, err, sqlitestore.ErrReadOnly, "Open in a missing directory")
	// Any byte of a path reaches the file system intact.
	odd := filepath.Join(dir, "a?b#c%20d é.db")
	open(t, odd, sqlitestore.Options{FullSync: true, SweepInterval: -1})
	assert.FileExists(t, odd)
}

func TestClosed(t *testing.T) {
	s, err := sqlitestore.Open(filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{})
	require.NoError(t, err)
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
				if errors.Is(err, bucket.ErrClosed) || !assert.NoError(t, err, "Admit during Close") {
					return
				}
				once.Do(func() { close(running) })
			}
		})
	}
	<-running
	require.NoError(t, s.Close(), "Close")
	wg.Wait()
	assert.NoError(t, s.Close(), "second Close")
	_, err = s.Admit(ctx, r)
	assert.ErrorIs(t, err, bucket.ErrClosed, "Admit after Close")
	_, err = s.Admit(ctx, driver.Request{})
	assert.ErrorIs(t, err, bucket.ErrClosed, "invalid Admit after Close")
	batch := []driver.Admission{{Request: r}}
	s.AdmitBatch(ctx, batch)
	assert.ErrorIs(t, batch[0].Err, bucket.ErrClosed, "AdmitBatch after Close")
	assert.ErrorIs(t, s.Refund(ctx, r, driver.Decision{Allowed: true}), bucket.ErrClosed, "Refund after Close")
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), bucket.ErrClosed, "Pause after Close")
	_, err = s.Has(ctx, "k")
	assert.ErrorIs(t, err, bucket.ErrClosed, "Has after Close")
	assert.ErrorIs(t, s.Sweep(ctx), bucket.ErrClosed, "Sweep after Close")
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
	_, err := s.Admit(ctx, driver.Request{Key: "x", Limit: backendtest.Limit(lim), Cost: 1})
	require.NoError(t, err)
	_, err = rawDB(t, path).Exec("UPDATE buckets SET quotas = ? WHERE key = ?", []byte("garbage"), []byte("x"))
	require.NoError(t, err)
	batch := []driver.Admission{
		{Request: driver.Request{Key: "x", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: driver.Request{Key: "y", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: driver.Request{Key: "x", Limit: backendtest.Limit(lim), Cost: 1}},
	}
	s.AdmitBatch(ctx, batch)
	for _, i := range []int{0, 2} {
		wantErr(t, "the corrupt key's admission", batch[i].Err, sqlitestore.ErrCorrupt)
		assert.False(t, batch[i].Decision.Allowed, "admission %d of the corrupt key", i)
	}
	assert.NoError(t, batch[1].Err, "the healthy key's admission")
	assert.True(t, batch[1].Decision.Allowed, "the healthy key's admission")
	has, err := s.Has(ctx, "y")
	assert.NoError(t, err)
	assert.True(t, has, "Has(y): its admission was not charged")
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
	require.ErrorIs(t, <-results, context.Canceled, "the first leader")
	time.Sleep(20 * time.Millisecond) // the patient call reaches the lock wait
	cancelFollower()
	assert.ErrorIs(t, <-follower, context.Canceled, "the queued Admit whose context ended")
	_, err := holder.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err)
	assert.NoError(t, <-results, "the patient Admit: want it decided once the lock was free")
}

func TestAdmitCancelWhileQueued(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{BusyTimeout: time.Minute})
	ctx := context.Background()
	lim := bucket.PerHour(1).WithBurst(100)
	r := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	_, err := s.Admit(ctx, r)
	require.NoError(t, err)
	holder := holdLock(t, path)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			timeout := time.Duration(10+5*i) * time.Millisecond
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := time.Now()
			_, err := s.Admit(cctx, r)
			assert.ErrorIs(t, err, context.DeadlineExceeded, "Admit %d while locked", i)
			assert.LessOrEqual(t, time.Since(start), 10*time.Second, "Admit %d with a %v context", i, timeout)
		})
	}
	wg.Wait()
	_, err = holder.ExecContext(ctx, "ROLLBACK")
	require.NoError(t, err)
	// Nothing above was charged: 99 of the burst of 100 remain.
	var allowed atomic.Int64
	for range 16 {
		wg.Go(func() {
			for range 10 {
				d, err := s.Admit(ctx, r)
				if !assert.NoError(t, err) {
					return
				}
				if d.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Equal(t, int64(99), allowed.Load(), "of 160 concurrent admissions after cancelled ones, allowed: want the 99 left")
}
