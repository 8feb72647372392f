//go:build unix

package sqlitestore_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The fault tests: another process holding the write lock past the busy
// timeout, the database file removed or replaced under running stores,
// and (full_linux_test.go) a full disk.

func init() {
	helperBodies["holdlock"] = lockHolder
	helperBodies["follower"] = follower
}

// ledgerBurst is the burst of ledgerLimit.
const ledgerBurst = 100

// ledgerLimit admits ledgerBurst units back-to-back, then one an hour: in
// a test's time, exactly ledgerBurst units.
var ledgerLimit = bucket.PerHour(1).WithBurst(ledgerBurst)

// A ledger keeps what the admissions of one key under ledgerLimit were
// told, so that a test can check, once a fault is over, that the file
// charged exactly the units its callers were told were admitted: none
// more (an admission that failed but was charged, or one charged twice),
// none fewer (an admission told admitted but lost).
type ledger struct {
	key     string
	charged int // units the file had charged when the ledger began

	mu     sync.Mutex
	starts []backendtest.Start
	failed int
}

func (l *ledger) request() driver.Request {
	return driver.Request{Key: l.key, Limit: backendtest.Limit(ledgerLimit), Cost: 1}
}

// record keeps what one admission was told.
func (l *ledger) record(d driver.Decision, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		l.failed++
	case d.Allowed:
		l.starts = append(l.starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
}

// admit makes n admissions on s, which must all be allowed.
func (l *ledger) admit(t *testing.T, s driver.Backend, n int) {
	t.Helper()
	for i := range n {
		d, err := s.Admit(context.Background(), l.request())
		require.NoError(t, err, "Admit(%q) %d", l.key, i)
		require.True(t, d.Allowed, "Admit(%q) %d", l.key, i)
		l.record(d, err)
	}
}

// try makes one admission on s and returns its error.
func (l *ledger) try(s driver.Backend) (driver.Decision, error) {
	d, err := s.Admit(context.Background(), l.request())
	l.record(d, err)
	return d, err
}

// settle admits on s until it refuses, then checks that the file charged
// ledgerBurst units in all, those of the starts kept, and that the starts
// conform to ledgerLimit.
func (l *ledger) settle(t *testing.T, s driver.Backend) {
	t.Helper()
	for {
		d, err := s.Admit(context.Background(), l.request())
		require.NoError(t, err, "Admit(%q) to settle the ledger", l.key)
		if !d.Allowed {
			break
		}
		l.record(d, err)
	}
	assert.Equal(t, ledgerBurst, l.charged+len(l.starts),
		"units of %q charged: %d before the ledger, %d told admitted (%d calls failed); want %d", l.key, l.charged, len(l.starts), l.failed, ledgerBurst)
	assert.NoError(t, backendtest.Check(ledgerLimit, l.starts), "starts of %q", l.key)
}

// intact checks the file at path with PRAGMA integrity_check, on a
// connection of its own.
func intact(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer db.Close()
	var res string
	require.NoError(t, db.QueryRow("PRAGMA integrity_check").Scan(&res), "PRAGMA integrity_check of %s", path)
	assert.Equal(t, "ok", res, "PRAGMA integrity_check of %s", path)
}

// lockHolder is the body of a holdlock helper: it takes the write lock of
// spec.Path and writes in a transaction, prints "holding", and commits
// when it reads a line, printing "released".
func lockHolder(t *testing.T, spec helperSpec) {
	db, err := sql.Open("sqlite", spec.Path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer db.Close()
	ctx := context.Background()
	c, err := db.Conn(ctx)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.ExecContext(ctx, "BEGIN IMMEDIATE")
	require.NoError(t, err)
	_, err = c.ExecContext(ctx, "UPDATE clock SET swept = swept WHERE id = 0")
	require.NoError(t, err)
	fmt.Println("holding")
	stdin := bufio.NewReader(os.Stdin)
	_, err = stdin.ReadString('\n')
	require.NoError(t, err)
	_, err = c.ExecContext(ctx, "COMMIT")
	require.NoError(t, err)
	fmt.Println("released")
	io.Copy(io.Discard, stdin)
}

// TestLockedByProcess: another process holds the write lock for longer
// than the store's busy timeout. Every operation that needs the lock
// fails with ErrLocked and charges nothing, from many goroutines at once;
// once the lock is let go, admissions resume, the file is intact and
// exactly the admissions reported were charged.
func TestLockedByProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{BusyTimeout: 50 * time.Millisecond, SweepInterval: -1})
	ctx := context.Background()
	led := &ledger{key: "ledger"}
	led.admit(t, s, 10)
	capped := backendtest.Leased("capped", bucket.PerSecond(100).WithInflight(2), "lease-1", time.Minute)
	leases := backendtest.LeaseRefs("capped", "lease-1")
	held, err := s.Admit(ctx, capped)
	require.NoError(t, err)
	require.True(t, held.Allowed, "capped Admit")
	refundable, err := s.Admit(ctx, driver.Request{Key: "r", Limit: backendtest.Limit(lim), Cost: 1})
	require.NoError(t, err)

	cmd, stdout, stdin := startHelper(t, "holdlock", helperSpec{Path: path})
	lines := bufio.NewScanner(stdout)
	require.True(t, lines.Scan(), "lock holder did not start\n%s", cmd.Stderr)
	require.Equal(t, "holding", lines.Text(), "lock holder\n%s", cmd.Stderr)

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 2 {
				d, err := led.try(s)
				wantErr(t, "Admit while another process holds the lock", err, sqlitestore.ErrLocked)
				assert.False(t, d.Allowed, "Admit while another process holds the lock")
			}
		})
	}
	wg.Wait()
	batch := []driver.Admission{{Request: led.request()}, {Request: driver.Request{Key: "other", Limit: backendtest.Limit(lim), Cost: 1}}}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		led.record(a.Decision, a.Err)
		wantErr(t, fmt.Sprintf("AdmitBatch[%d] while locked", i), a.Err, sqlitestore.ErrLocked)
	}
	wantErr(t, "Refund while locked", s.Refund(ctx, driver.Request{Key: "r", Limit: backendtest.Limit(lim), Cost: 1}, refundable), sqlitestore.ErrLocked)
	wantErr(t, "Pause while locked", s.Pause(ctx, "ledger", time.Hour), sqlitestore.ErrLocked)
	_, err = s.Renew(ctx, leases, time.Minute)
	wantErr(t, "Renew while locked", err, sqlitestore.ErrLocked)
	wantErr(t, "Release while locked", s.Release(ctx, leases), sqlitestore.ErrLocked)
	l, err := bucket.NewLimiter(s, ledgerLimit)
	require.NoError(t, err)
	ok, err := l.Allow(ctx, "ledger")
	wantErr(t, "Limiter.Allow while locked", err, sqlitestore.ErrLocked)
	assert.False(t, ok, "Limiter.Allow while locked")

	fmt.Fprintln(stdin, "release")
	require.True(t, lines.Scan(), "lock holder did not let go\n%s", cmd.Stderr)
	require.Equal(t, "released", lines.Text(), "lock holder\n%s", cmd.Stderr)
	stdin.Close()
	require.NoError(t, cmd.Wait(), "lock holder\n%s", cmd.Stderr)

	led.admit(t, s, 10)
	d, err := s.Admit(ctx, capped)
	require.NoError(t, err, "capped Admit after the lock was let go")
	assert.True(t, d.Allowed, "capped Admit of a lease held: want its lease counted once")
	require.NoError(t, s.Release(ctx, leases), "Release after the lock was let go")
	require.NoError(t, s.Refund(ctx, driver.Request{Key: "r", Limit: backendtest.Limit(lim), Cost: 1}, refundable), "Refund after the lock was let go")
	intact(t, path)
	led.settle(t, s)
}

// A moveStore is one of the stores of TestMoved, on a fake clock of its
// own so that the test says when it checks its path.
type moveStore struct {
	*sqlitestore.Store
	clock *fakeClock
}

// notice has st check its path at its next operation, an admission of
// led's key, which must fail with ErrMoved and admit nothing.
func (st moveStore) notice(t *testing.T, led *ledger, what string) {
	t.Helper()
	st.clock.Add(100 * time.Millisecond)
	d, err := led.try(st)
	wantErr(t, what, err, sqlitestore.ErrMoved)
	assert.False(t, d.Allowed, what)
}

// TestMoved removes or replaces the database file under two stores of
// one path. Each goes on with the old file until it checks its path, then
// fails one operation with ErrMoved, having changed nothing, and runs on
// the file at the path from then on; both files stay intact, and each
// charged exactly the admissions reported on it.
func TestMoved(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		// fault moves the file at path away, and returns the units of the
		// ledger's key charged in the file now at the path, or -1 if
		// the path names no database.
		fault func(t *testing.T, path string) int
		// kept is where the old file lives on, if it does.
		kept string
	}{
		{"removed", func(t *testing.T, path string) int {
			require.NoError(t, os.Remove(path))
			return 0
		}, ""},
		{"removed with its -wal and -shm", func(t *testing.T, path string) int {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				require.NoError(t, os.Remove(path+suffix))
			}
			return 0
		}, ""},
		{"renamed away", func(t *testing.T, path string) int {
			require.NoError(t, os.Rename(path, path+".old"))
			return 0
		}, ".old"},
		{"replaced by another store's file", func(t *testing.T, path string) int {
			other := path + ".other"
			s := open(t, other, sqlitestore.Options{Now: func() time.Time { return t0 }})
			(&ledger{key: "ledger"}).admit(t, s, 7)
			require.NoError(t, s.Close())
			require.NoError(t, os.Rename(other, path))
			return 7
		}, ""},
		{"replaced by a text file", func(t *testing.T, path string) int {
			require.NoError(t, os.WriteFile(path+".txt", []byte("not a database\n"), 0o644))
			require.NoError(t, os.Rename(path+".txt", path))
			return -1
		}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "b.db")
			var a, b moveStore
			for _, st := range []*moveStore{&a, &b} {
				st.clock = &fakeClock{t: t0}
				st.Store = open(t, path, sqlitestore.Options{Now: st.clock.Now, SweepInterval: -1})
			}
			ctx := context.Background()
			old := &ledger{key: "ledger"}
			old.admit(t, a, 5)
			old.admit(t, b, 5)
			booked, err := a.Admit(ctx, driver.Request{Key: "refunded", Limit: backendtest.Limit(ledgerLimit), Cost: 1})
			require.NoError(t, err)

			charged := tt.fault(t, path)

			// Until they check, both stores admit on the old file.
			old.admit(t, a, 1)
			old.admit(t, b, 1)
			a.notice(t, old, "first Admit of store a to check its path")
			next := &ledger{key: "ledger", charged: charged}
			if charged < 0 {
				// The path names no database: every operation says so
				// and tries again, until the path is set right.
				for range 2 {
					_, err := next.try(a)
					wantErr(t, "Admit with a text file at the path", err, sqlitestore.ErrMoved)
					wantErr(t, "Admit with a text file at the path", err, sqlitestore.ErrNotDatabase)
				}
				text, err := os.ReadFile(path)
				require.NoError(t, err)
				assert.Equal(t, "not a database\n", string(text), "the text file at the path: want it untouched")
				old.admit(t, b, 1) // b still on the old file
				require.NoError(t, os.Remove(path))
				next.charged = 0
			}
			next.admit(t, a, 3)
			// A refund of an admission of the old file gives nothing back
			// on the new one.
			require.NoError(t, a.Refund(ctx, driver.Request{Key: "refunded", Limit: backendtest.Limit(ledgerLimit), Cost: 1}, booked))
			old.admit(t, b, 1) // b still on the old file
			b.notice(t, next, "first Admit of store b to check its path")
			next.admit(t, b, 3)

			intact(t, path)
			next.settle(t, a)
			refunded := &ledger{key: "refunded"}
			refunded.settle(t, b)
			if tt.kept != "" {
				kept := path + tt.kept
				intact(t, kept)
				old.settle(t, open(t, kept, sqlitestore.Options{Now: b.clock.Now}))
			}
		})
	}
}

// TestCloseMoved closes a store whose file was renamed away before it
// noticed: Close leaves the old file complete and takes its -wal and
// -shm files away from the path, so that a store opened on the path
// then starts a file of its own.
func TestCloseMoved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s, err := sqlitestore.Open(path, sqlitestore.Options{SweepInterval: -1})
	require.NoError(t, err)
	old := &ledger{key: "ledger"}
	old.admit(t, s, 10)
	require.NoError(t, os.Rename(path, path+".old"))
	old.admit(t, s, 1) // not noticed yet: on the old file
	require.NoError(t, s.Close())
	for _, suffix := range []string{"-wal", "-shm"} {
		assert.NoFileExists(t, path+suffix, "the old file's companion at the path after Close")
	}
	next := &ledger{key: "ledger"}
	next.settle(t, open(t, path, sqlitestore.Options{SweepInterval: -1}))
	intact(t, path+".old")
	old.settle(t, open(t, path+".old", sqlitestore.Options{SweepInterval: -1}))
}

// follower is the body of a follower helper: it prints "ready", then
// admits spec.Key's requests until its stdin closes, printing each
// admitted start, and "moved" when it finds its file moved.
func follower(t *testing.T, spec helperSpec) {
	lim, err := bucket.Parse(spec.Limit)
	require.NoError(t, err)
	s := open(t, spec.Path, sqlitestore.Options{SweepInterval: -1})
	fmt.Println("ready")
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	req := driver.Request{Key: spec.Key, Limit: backendtest.Limit(lim), Cost: 1, MaxWait: spec.MaxWait}
	for {
		select {
		case <-stop:
			return
		default:
		}
		d, err := s.Admit(context.Background(), req)
		switch {
		case errors.Is(err, sqlitestore.ErrMoved):
			fmt.Println("moved")
		case !assert.NoError(t, err):
			<-stop
			return
		case d.Allowed:
			fmt.Println("start", d.Start())
			time.Sleep(d.Wait)
		default:
			time.Sleep(d.Wait - spec.MaxWait + rand.N(spec.MaxWait))
		}
	}
}

// TestMovedProcesses renames the database file away while another
// process admits on it as fast as its limit allows, and so does this one.
// The first store to notice opens a new file at the path while the other
// still writes to the old one, until it notices in turn: the starts on
// each file conform to the limit, and both files are intact.
func TestMovedProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a second")
	}
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{SweepInterval: -1})
	spec := helperSpec{Path: path, Key: "k", Limit: "500/s burst=5", MaxWait: 10 * time.Millisecond}
	lim, err := bucket.Parse(spec.Limit)
	require.NoError(t, err)
	cmd, stdout, stdin := startHelper(t, "follower", spec)
	var (
		mu     sync.Mutex
		starts [2][]backendtest.Start // on the old file, on the new one
		moved  int
		ready  = make(chan struct{})
		done   = make(chan string, 1)
	)
	go func() {
		done <- readHelper(stdout, func(f []string) bool {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case len(f) == 1 && f[0] == "ready":
				close(ready)
			case len(f) == 1 && f[0] == "moved":
				moved++
			case len(f) == 2 && f[0] == "start":
				var st backendtest.Start
				fmt.Sscan(f[1], &st.At)
				st.Cost = 1
				starts[min(moved, 1)] = append(starts[min(moved, 1)], st)
			default:
				return false
			}
			return true
		})
	}()
	select {
	case <-ready:
	case other := <-done:
		cmd.Wait()
		require.FailNow(t, "follower ended before it was ready", "%s%s", other, cmd.Stderr)
	}
	// This store admits too, at its own pace, on the same key.
	req := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1, MaxWait: spec.MaxWait}
	var mine [2][]backendtest.Start
	ctx := context.Background()
	// admit admits on file (0: the old, 1: the new) until done, or on the
	// old file until the store finds it moved.
	admit := func(file int, done func() bool) (moved bool) {
		t.Helper()
		for !done() {
			d, err := s.Admit(ctx, req)
			if file == 0 && errors.Is(err, sqlitestore.ErrMoved) {
				return true
			}
			require.NoError(t, err)
			if d.Allowed {
				mine[file] = append(mine[file], backendtest.Start{At: d.Start(), Cost: 1})
			}
			time.Sleep(2 * time.Millisecond)
		}
		return false
	}
	// startsOn returns a function that tells when the other process has
	// admitted 50 units on file, or 10s have passed.
	startsOn := func(file int) func() bool {
		deadline := time.Now().Add(10 * time.Second)
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(starts[file]) >= 50 || time.Now().After(deadline)
		}
	}
	require.False(t, admit(0, startsOn(0)), "ErrMoved before the file was moved")
	require.NoError(t, os.Rename(path, path+".old"))
	deadline := time.Now().Add(10 * time.Second)
	require.True(t, admit(0, func() bool { return time.Now().After(deadline) }), "the file renamed away: no ErrMoved within 10s")
	admit(1, startsOn(1))
	stdin.Close()
	other := <-done
	require.NoError(t, cmd.Wait(), "follower\n%s%s", other, cmd.Stderr)

	assert.Equal(t, 1, moved, "ErrMoved reported to the other process: want once")
	for file, name := range []string{"old", "new"} {
		all := append(starts[file], mine[file]...)
		t.Logf("%s file: %d starts of the other process, %d of this one", name, len(starts[file]), len(mine[file]))
		assert.NotEmpty(t, starts[file], "the other process's starts on the %s file", name)
		assert.NotEmpty(t, mine[file], "this process's starts on the %s file", name)
		assert.NoError(t, backendtest.Check(lim, all), "the starts on the %s file", name)
	}
	intact(t, path)
	intact(t, path+".old")
}
