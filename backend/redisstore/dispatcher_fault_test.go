package redisstore_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDispatcherFault kills the Redis a Dispatcher admits through while
// 1,000 jobs are in flight, and restarts it empty. Every job resolves (the
// dispatcher retries admissions the backend failed to decide), the failures
// are reported as matchable errors in Stats, admission by Redis resumes
// after the restart (200 jobs submitted then start within the limit, under
// every policy), and the handler starts before the kill and after the restart
// each conform to the limit: only what the restart forgot is admitted
// twice. Start times are taken where the service would see them, in the
// handler, so the check allows one unit of burst for scheduling jitter.
// After a change of backend (the kill, with local buckets, and the
// restart) jobs the previous one admitted may still start, so each phase
// is checked from settle after its change on, by when they have.
func TestDispatcherFault(t *testing.T) {
	for _, policy := range []redisstore.FailurePolicy{redisstore.FailClosed, redisstore.FailOpen, redisstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) { testDispatcherFault(t, policy) })
	}
}

// settle is how long after a change of backend the jobs the previous one
// admitted have started: far more than the dispatcher books ahead.
const settle = 50 * time.Millisecond

func testDispatcherFault(t *testing.T, policy redisstore.FailurePolicy) {
	srv := redistest.Start(t)
	c := failFastClient(t, srv.Addr())
	s := newStore(t, c, redisstore.Options{FailurePolicy: policy, RetryInterval: 20 * time.Millisecond})
	limit := bucket.PerSecond(200).WithBurst(3).WithQuota(60, 250*time.Millisecond)
	lim, err := bucket.NewLimiter(s, limit)
	require.NoError(t, err)

	type start struct {
		key int
		at  int64
	}
	var (
		mu     sync.Mutex
		starts []start
		phase  atomic.Int64 // 0 before the kill, 1 during the outage, 2 after the restart
		phases [3][]start
	)
	d, err := dispatcher.New(func(_ context.Context, key int) (int, error) {
		now := time.Now().UnixNano()
		mu.Lock()
		p := phase.Load()
		phases[p] = append(phases[p], start{key, now})
		starts = append(starts, start{key, now})
		mu.Unlock()
		return key, nil
	}, func(k int) string { return fmt.Sprint("tenant-", k) }, dispatcher.WithWorkers(8), dispatcher.WithQueue(1000), dispatcher.WithLimiter(lim))
	require.NoError(t, err)
	var futures []*dispatcher.Future[int]
	for i := range 1000 {
		f, err := d.Submit(context.Background(), i%4)
		require.NoError(t, err)
		futures = append(futures, f)
	}

	time.Sleep(300 * time.Millisecond)
	// While Redis dies, starts may come from it or from the policy: the
	// phases leave that moment out.
	killing := time.Now().UnixNano()
	require.NoError(t, srv.Kill())
	phase.Store(1) // Kill returns once Redis has exited
	killed := time.Now().UnixNano()
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, srv.Restart())
	phase.Store(2)
	restarted := time.Now().UnixNano()
	// More jobs after the restart: whatever the outage left (failing open
	// runs every job at once), admission by Redis must resume for these.
	for i := range 200 {
		f, err := d.Submit(context.Background(), i%4)
		require.NoError(t, err)
		futures = append(futures, f)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, d.Shutdown(ctx), "Shutdown (jobs left unresolved by the outage?)")
	for i, f := range futures {
		_, err := f.Result()
		assert.NoError(t, err, "job %d", i)
	}
	st := d.Stats()
	assert.Equal(t, int64(len(futures)), st.Succeeded, "Stats.Succeeded")
	if policy == redisstore.FailClosed {
		assert.NotZero(t, st.BackendErrors, "Stats.BackendErrors")
		assert.ErrorIs(t, st.LastBackendError, redisstore.ErrUnavailable, "Stats.LastBackendError")
		assert.LessOrEqual(t, len(phases[1]), 4*(3+1), "fail closed: jobs started during the outage: want at most the ones admitted before it")
	}
	require.GreaterOrEqual(t, len(phases[2]), 200, "jobs started after the restart: want at least the 200 submitted then")
	// Each phase on its own conforms (with a unit of jitter allowance);
	// across the restart Redis forgot what it had admitted.
	check := func(name string, ss []start, from, to int64) {
		for k := range 4 {
			var at []backendtest.Start
			for _, s := range ss {
				if s.key == k && s.at >= from && s.at < to {
					at = append(at, backendtest.Start{At: s.at, Cost: 1})
				}
			}
			assert.NoError(t, backendtest.Check(limit.WithBurst(limit.Burst+1), at), "%s, tenant-%d", name, k)
		}
	}
	check("before the kill", phases[0], 0, killing)
	check("after the restart", phases[2], restarted+int64(settle), math.MaxInt64)
	if policy == redisstore.FailLocal {
		check("during the outage (local buckets)", phases[1], killed+int64(settle), math.MaxInt64)
	}
	t.Logf("%s: starts before/during/after the outage: %d/%d/%d; backend errors %d", policy, len(phases[0]), len(phases[1]), len(phases[2]), st.BackendErrors)
}
