package sqlitestore_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/internal/proctest"
)

// leaseEnv carries the database file's path to the children of
// TestLeaseProcesses.
const leaseEnv = "SQLITESTORE_TEST_LEASES"

// TestLeaseProcesses runs the multi-process lease tests on one file:
// 4 processes × 8 goroutines on one capped key, and one of them killed
// with SIGKILL holding leases (internal/proctest says what must hold).
func TestLeaseProcesses(t *testing.T) {
	if path := os.Getenv(leaseEnv); path != "" {
		proctest.LeaseChild(t, open(t, path, sqlitestore.Options{}))
		return
	}
	path := filepath.Join(t.TempDir(), "leases.db")
	open(t, path, sqlitestore.Options{}).Close() // create the schema once
	proctest.Leases(t, proctest.Config{
		Env:    leaseEnv,
		Orders: path,
		Now:    func() (time.Time, error) { return time.Now(), nil },
	})
}
