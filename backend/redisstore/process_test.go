package redisstore_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/internal/proctest"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// childEnv carries a child's orders (JSON) when TestMultiProcess re-executes
// the test binary.
const childEnv = "REDISSTORE_TEST_CHILD"

type childOrders struct {
	Addr, Prefix, Key string
}

// childStore returns a child's store, connected, on the Redis its orders
// name; it and its client close at the end of t.
func childStore(t *testing.T, orders string) (*redisstore.Store, childOrders) {
	var o childOrders
	require.NoError(t, json.Unmarshal([]byte(orders), &o))
	c := redis.NewClient(&redis.Options{Addr: o.Addr})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{Prefix: o.Prefix})
	require.NoError(t, c.Ping(context.Background()).Err())
	return s, o
}

// TestMultiProcess runs 4 processes of 8 goroutines each on one key for 3
// seconds (internal/proctest says what must hold).
func TestMultiProcess(t *testing.T) {
	if orders := os.Getenv(childEnv); orders != "" {
		s, o := childStore(t, orders)
		proctest.Child(t, s, o.Key)
		return
	}
	c := newClient(t)
	t.Setenv(redistest.EnvAddr, c.Options().Addr) // the children's
	orders, _ := json.Marshal(childOrders{Addr: c.Options().Addr, Prefix: testPrefix(t), Key: "one-key"})
	proctest.Parent(t, proctest.Config{
		Env:    childEnv,
		Orders: string(orders),
		Now:    func() (time.Time, error) { return c.Time(context.Background()).Result() },
	})
}

// leaseChildEnv carries a child's orders (JSON) when TestLeaseProcesses
// re-executes the test binary.
const leaseChildEnv = "REDISSTORE_TEST_LEASE_CHILD"

// TestLeaseProcesses runs the multi-process lease tests on one Redis:
// 4 processes × 8 goroutines on one capped key, and one of them killed
// with SIGKILL holding leases (internal/proctest says what must hold).
func TestLeaseProcesses(t *testing.T) {
	if orders := os.Getenv(leaseChildEnv); orders != "" {
		s, _ := childStore(t, orders)
		proctest.LeaseChild(t, s)
		return
	}
	c := newClient(t)
	t.Setenv(redistest.EnvAddr, c.Options().Addr) // the children's
	orders, _ := json.Marshal(childOrders{Addr: c.Options().Addr, Prefix: testPrefix(t)})
	proctest.Leases(t, proctest.Config{
		Env:    leaseChildEnv,
		Orders: string(orders),
		Now:    func() (time.Time, error) { return c.Time(context.Background()).Result() },
	})
}

// learnsChildEnv carries a child's orders (JSON) when
// TestLearnsAcrossProcesses re-executes the test binary.
const learnsChildEnv = "REDISSTORE_TEST_LEARNS_CHILD"

// TestLearnsAcrossProcesses runs internal/proctest's learned-limit test
// on one Redis: 3 processes admit on one key, one of them reports a 429,
// and the merged starts after it must keep to the dropped rate.
func TestLearnsAcrossProcesses(t *testing.T) {
	if orders := os.Getenv(learnsChildEnv); orders != "" {
		s, _ := childStore(t, orders)
		proctest.LearnChild(t, s)
		return
	}
	c := newClient(t)
	t.Setenv(redistest.EnvAddr, c.Options().Addr) // the children's
	orders, _ := json.Marshal(childOrders{Addr: c.Options().Addr, Prefix: testPrefix(t)})
	proctest.Learns(t, proctest.Config{
		Env:    learnsChildEnv,
		Orders: string(orders),
		Now:    func() (time.Time, error) { return c.Time(context.Background()).Result() },
	})
}
