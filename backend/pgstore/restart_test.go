package pgstore_test

import (
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/internal/faulttest"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

// TestRestart stops the PostgreSQL server a store uses (a cluster of the
// test's own, stopped at once, as in a crash) while 48 goroutines admit
// through Store.Admit and 8 wait through bucket.Limiter.Wait, and starts
// it again (internal/faulttest says what must hold).
func TestRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops PostgreSQL clusters")
	}
	for _, policy := range []pgstore.FailurePolicy{pgstore.FailClosed, pgstore.FailOpen, pgstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) { testFault(t, policy) })
	}
}

func testFault(t *testing.T, policy pgstore.FailurePolicy) {
	srv := pgtest.Start(t)
	pool := pgtest.Pool(t, srv.URL()+"&connect_timeout=1")
	faulttest.Run(t, faulttest.Config{
		Store:       newStore(t, pool, pgstore.Options{FailurePolicy: policy, RetryInterval: 20 * time.Millisecond, Timeout: time.Second}),
		Policy:      policy.String(),
		Unavailable: pgstore.ErrUnavailable,
		IsLocal:     pgstore.IsLocal,
		Stop:        srv.Stop,
		Start:       srv.Start,
	})
}
