//go:build unix

package sqlitestore_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
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
// timeout, and (full_linux_test.go) a full disk.

func init() { helperBodies["holdlock"] = lockHolder }

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
