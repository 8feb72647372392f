package sqlitestore

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"golang.org/x/sys/unix"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// TestOpenKeepsOtherConnectionsLocks: opening a second Store on a file
// leaves the first one's SQLite locks in place. A descriptor of the file
// opened and closed by this process (as a write check once did) drops
// every POSIX lock the process holds on it: SQLite still believes it holds
// them, and another process may then delete the WAL under it.
func TestOpenKeepsOtherConnectionsLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	a, err := Open(path, Options{SweepInterval: -1})
	require.NoError(t, err)
	defer a.Close()
	ctx := context.Background()
	r := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(10)), Cost: 1}
	_, err = a.Admit(ctx, r)
	require.NoError(t, err)
	before := heldLocks(t, path)
	require.NotZero(t, before, "locks on the database file after an admission: the test cannot see SQLite's locks")
	b, err := Open(path, Options{SweepInterval: -1})
	require.NoError(t, err)
	defer b.Close()
	assert.GreaterOrEqual(t, heldLocks(t, path), before, "locks on the file after opening a second Store: it dropped the first one's")
}

// heldLocks counts the byte ranges of path that this process locks, as an
// open file description of its own sees them (F_OFD_GETLK reports the
// locks of other descriptions). The descriptor stays open until the test
// ends: closing it would drop this process's POSIX locks.
func heldLocks(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	n := 0
	for start := int64(0); ; {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: start}
		require.NoError(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk))
		if lk.Type == unix.F_UNLCK {
			return n
		}
		n++
		if lk.Len == 0 {
			return n
		}
		start = lk.Start + lk.Len
	}
}
