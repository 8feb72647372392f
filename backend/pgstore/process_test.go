package pgstore_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
	"github.com/leakybucket/leakybucket/internal/proctest"
)

// childEnv carries a child's orders (JSON) when TestMultiProcess re-executes
// the test binary.
const childEnv = "PGSTORE_TEST_CHILD"

type childOrders struct {
	URL, Schema, Key string
}

// TestMultiProcess runs 4 processes of 8 goroutines each on one key for 3
// seconds (internal/proctest says what must hold).
func TestMultiProcess(t *testing.T) {
	if orders := os.Getenv(childEnv); orders != "" {
		s, o := childStore(t, orders)
		proctest.Child(t, s, o.Key)
		return
	}
	proctest.Parent(t, parentConfig(t, childEnv, "one-key"))
}

// leaseChildEnv carries a child's orders (JSON) when TestLeaseProcesses
// re-executes the test binary.
const leaseChildEnv = "PGSTORE_TEST_LEASE_CHILD"

// TestLeaseProcesses runs the multi-process lease tests on one schema:
// 4 processes × 8 goroutines on one capped key, and one of them killed
// with SIGKILL holding leases (internal/proctest says what must hold).
func TestLeaseProcesses(t *testing.T) {
	if orders := os.Getenv(leaseChildEnv); orders != "" {
		s, _ := childStore(t, orders)
		proctest.LeaseChild(t, s)
		return
	}
	proctest.Leases(t, parentConfig(t, leaseChildEnv, ""))
}

// parentConfig returns the configuration of a parent whose children find
// their orders (a schema of t's own, and key) in env.
func parentConfig(t *testing.T, env, key string) proctest.Config {
	url := pgtest.URL(t)
	pool := pgtest.Pool(t, url)
	orders, _ := json.Marshal(childOrders{URL: url, Schema: pgtest.Schema(t, url), Key: key})
	return proctest.Config{
		Env:    env,
		Orders: string(orders),
		Now: func() (now time.Time, err error) {
			err = pool.QueryRow(context.Background(), "SELECT clock_timestamp()").Scan(&now)
			return now, err
		},
	}
}

// childStore returns a child's Store on the schema of its orders, with
// the schema installed, closed at the end of t.
func childStore(t *testing.T, orders string) (*pgstore.Store, childOrders) {
	var o childOrders
	require.NoError(t, json.Unmarshal([]byte(orders), &o))
	pool, err := pgxpool.New(context.Background(), o.URL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	s, err := pgstore.New(pool, pgstore.Options{Schema: o.Schema})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	// The schema exists before the start: processes install it at once.
	_, err = s.Admit(context.Background(), driver.Request{Key: "warm-up", Limit: backendtest.Limit(proctest.Limit), Cost: 1})
	require.NoError(t, err)
	return s, o
}
