package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/redistest"
)

// TestDispatcherFault kills the Redis a Dispatcher admits through while
// 1,000 jobs are in flight, and restarts it empty. Every job resolves (the
// dispatcher retries admissions the backend failed to decide), the failures
// are reported as matchable errors in Stats, admission resumes after the
// restart, and the handler starts before the kill and after the restart
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
	if err != nil {
		t.Fatal(err)
	}

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
	}, dispatcher.WithWorkers(8), dispatcher.WithQueue(1000), dispatcher.WithLimiter(lim),
		dispatcher.WithKey(func(k int) string { return fmt.Sprint("tenant-", k) }))
	if err != nil {
		t.Fatal(err)
	}
	var futures []*dispatcher.Future[int]
	for i := range 1000 {
		f, err := d.Submit(context.Background(), i%4)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}

	time.Sleep(300 * time.Millisecond)
	phase.Store(1)
	killed := time.Now().UnixNano()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	phase.Store(2)
	restarted := time.Now().UnixNano()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (jobs left unresolved by the outage?)", err)
	}
	for i, f := range futures {
		if _, err := f.Result(); err != nil {
			t.Errorf("job %d: %v", i, err)
		}
	}
	st := d.Stats()
	if st.Succeeded != 1000 {
		t.Errorf("Stats: %d succeeded, want 1000", st.Succeeded)
	}
	if policy == redisstore.FailClosed {
		if st.BackendErrors == 0 || !errors.Is(st.LastBackendError, redisstore.ErrUnavailable) {
			t.Errorf("Stats: %d backend errors, last %v; want some, matching ErrUnavailable", st.BackendErrors, st.LastBackendError)
		}
		if n := len(phases[1]); n > 4*(3+1) {
			t.Errorf("fail closed: %d jobs started during the outage, want at most the ones admitted before it", n)
		}
	}
	if len(phases[2]) == 0 && policy != redisstore.FailOpen { // failing open runs everything during the outage
		t.Fatal("no job started after the restart")
	}
	// Each phase on its own conforms (with a unit of jitter allowance);
	// across the restart Redis forgot what it had admitted.
	check := func(name string, ss []start, from int64) {
		for k := range 4 {
			var at []backendtest.Start
			for _, s := range ss {
				if s.key == k && s.at >= from {
					at = append(at, backendtest.Start{At: s.at, Cost: 1})
				}
			}
			if err := backendtest.Check(limit.WithBurst(limit.Burst+1), at); err != nil {
				t.Errorf("%s, tenant-%d: %v", name, k, err)
			}
		}
	}
	check("before the kill", phases[0], 0)
	check("after the restart", phases[2], restarted+int64(settle))
	if policy == redisstore.FailLocal {
		check("during the outage (local buckets)", phases[1], killed+int64(settle))
	}
	t.Logf("%s: starts before/during/after the outage: %d/%d/%d; backend errors %d", policy, len(phases[0]), len(phases[1]), len(phases[2]), st.BackendErrors)
}
