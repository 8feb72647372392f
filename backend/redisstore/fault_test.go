package redisstore_test

import (
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/internal/faulttest"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestFault kills the Redis a store uses while 48 goroutines admit through
// Store.Admit and 8 wait through bucket.Limiter.Wait, and restarts it
// empty (internal/faulttest says what must hold).
func TestFault(t *testing.T) {
	for _, policy := range []redisstore.FailurePolicy{redisstore.FailClosed, redisstore.FailOpen, redisstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) { testFault(t, policy) })
	}
}

// failFastClient returns a client that fails fast, as docs/redis.md
// advises: by default go-redis retries dialing 5 times and commands 3
// times, riding out a short outage with calls that block for seconds.
func failFastClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:          addr,
		DialTimeout:   200 * time.Millisecond,
		DialerRetries: 1,
		MaxRetries:    -1,
		ReadTimeout:   time.Second,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func testFault(t *testing.T, policy redisstore.FailurePolicy) {
	srv := redistest.Start(t)
	c := failFastClient(t, srv.Addr())
	faulttest.Run(t, faulttest.Config{
		Store:       newStore(t, c, redisstore.Options{FailurePolicy: policy, RetryInterval: 20 * time.Millisecond}),
		Policy:      policy.String(),
		Unavailable: redisstore.ErrUnavailable,
		IsLocal:     redisstore.IsLocal,
		Stop:        srv.Kill,
		Start:       srv.Restart,
	})
}
