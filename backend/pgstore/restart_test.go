package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

// TestRestart stops the PostgreSQL server a store uses (a cluster of the
// test's own, stopped at once, as in a crash) while 48 goroutines admit
// through Store.Admit and 8 wait through bucket.Limiter.Wait, and starts
// it again. Every call must return, errors must match ErrUnavailable (or
// be the caller's own deadline), admission must resume after the
// restart, and the starts the database admitted before the stop, those it
// admitted after the restart, and those the local fallback admitted must
// each conform to the limit.
func TestRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops PostgreSQL clusters")
	}
	for _, policy := range []pgstore.FailurePolicy{pgstore.FailClosed, pgstore.FailOpen, pgstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) { testFault(t, policy) })
	}
}

// faultLimit is the limit of each of the fault test's keys.
var faultLimit = bucket.PerSecond(200).WithBurst(4).WithQuota(60, 250*time.Millisecond)

type faultStart struct {
	key    int
	d      driver.Decision
	origin string // "db", "local" or "open"
}

func testFault(t *testing.T, policy pgstore.FailurePolicy) {
	srv := pgtest.Start(t)
	pool := pgtest.Pool(t, srv.URL()+"&connect_timeout=1")
	s := newStore(t, pool, pgstore.Options{FailurePolicy: policy, RetryInterval: 20 * time.Millisecond, Timeout: time.Second})
	lim, err := bucket.NewLimiter(s, faultLimit)
	require.NoError(t, err)
	keys := []string{"a", "b", "c{x}", "d\x00"}

	var (
		stop      atomic.Bool
		mu        sync.Mutex
		starts    []faultStart
		badErrs   []error
		calls     atomic.Int64
		failures  atomic.Int64 // ErrUnavailable
		slowest   atomic.Int64 // ns
		wg        sync.WaitGroup
		resumedAt atomic.Int64 // Now of the first admission the database decided after the restart
		restartAt atomic.Int64
		seen      []string
	)
	defer func() { t.Log(seen) }()
	record := func(took time.Duration, err error) {
		calls.Add(1)
		for {
			old := slowest.Load()
			if int64(took) <= old || slowest.CompareAndSwap(old, int64(took)) {
				break
			}
		}
		if err != nil && testing.Verbose() {
			mu.Lock()
			if len(seen) < 5 {
				seen = append(seen, fmt.Sprintf("%T %v", err, err))
			}
			mu.Unlock()
		}
		switch {
		case err == nil:
		case errors.Is(err, pgstore.ErrUnavailable):
			failures.Add(1)
		case errors.Is(err, context.DeadlineExceeded):
		default:
			mu.Lock()
			badErrs = append(badErrs, err)
			mu.Unlock()
		}
	}
	for w := range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := w % len(keys)
			req := driver.Request{Key: keys[k], Limit: backendtest.Limit(faultLimit), Cost: 1, MaxWait: 30 * time.Millisecond}
			for !stop.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				t0 := time.Now()
				d, err := s.Admit(ctx, req)
				cancel()
				record(time.Since(t0), err)
				switch {
				case err != nil:
					time.Sleep(2 * time.Millisecond)
				case d.Allowed:
					origin := "db"
					if pgstore.IsLocal(d) {
						origin = "local"
					} else if d.Booking.TAT == 0 {
						origin = "open"
					} else if r := restartAt.Load(); r != 0 && d.Now > r {
						resumedAt.CompareAndSwap(0, d.Now)
					}
					mu.Lock()
					starts = append(starts, faultStart{k, d, origin})
					mu.Unlock()
					time.Sleep(min(d.Wait, 30*time.Millisecond))
				default:
					time.Sleep(min(d.Wait-req.MaxWait, 10*time.Millisecond))
				}
			}
		}()
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				t0 := time.Now()
				err := lim.Wait(ctx, keys[w%len(keys)])
				cancel()
				record(time.Since(t0), err)
				if err != nil {
					time.Sleep(2 * time.Millisecond)
				}
			}
		}()
	}

	time.Sleep(400 * time.Millisecond)
	require.NoError(t, srv.Stop())
	killAt := time.Now().UnixNano() // Stop returns once the server has exited
	time.Sleep(600 * time.Millisecond)
	restartAt.Store(time.Now().UnixNano())
	require.NoError(t, srv.Start())
	deadline := time.Now().Add(5 * time.Second)
	for resumedAt.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		require.FailNow(t, "calls still running 10s after the end: a call hangs")
	}

	assert.Empty(t, badErrs, "errors that match neither ErrUnavailable nor the caller's deadline")
	require.NotZero(t, resumedAt.Load(), "no admission by the database within 5s of its restart")
	t.Logf("%d calls, %d ErrUnavailable, slowest %v; the database back in %v",
		calls.Load(), failures.Load(), time.Duration(slowest.Load()), time.Duration(resumedAt.Load()-restartAt.Load()))
	// Every call's ctx ends within 2s; one that outlives it by far ignored it.
	assert.LessOrEqual(t, time.Duration(slowest.Load()), 5*time.Second, "slowest call, with a ctx of 2s")

	byOrigin := map[string]int{}
	groups := map[string][]backendtest.Start{}
	for _, st := range starts {
		group := st.origin
		if st.origin == "db" {
			switch {
			case st.d.Now < killAt:
				group = "db before the stop"
			case st.d.Now >= restartAt.Load():
				group = "db after the restart"
			default:
				assert.Fail(t, fmt.Sprintf("the database decided at %v, while it was down", time.Unix(0, st.d.Now)))
			}
		}
		byOrigin[group]++
		key := fmt.Sprintf("%s, key %q", group, keys[st.key])
		groups[key] = append(groups[key], backendtest.Start{At: st.d.Start(), Cost: 1})
	}
	t.Logf("admissions: %v", byOrigin)
	for group, ss := range groups {
		if group[:4] == "open" {
			continue // FailOpen admits without limit
		}
		assert.NoError(t, backendtest.Check(faultLimit, ss), group)
	}
	assert.NotZero(t, byOrigin["db before the stop"], "admissions by the database before the kill: %v", byOrigin)
	assert.NotZero(t, byOrigin["db after the restart"], "admissions by the database after the restart: %v", byOrigin)
	switch policy {
	case pgstore.FailClosed:
		assert.NotZero(t, failures.Load(), "FailClosed: calls failed with ErrUnavailable while the database was down")
		assert.Zero(t, byOrigin["open"]+byOrigin["local"], "FailClosed admitted without the database: %v", byOrigin)
	case pgstore.FailOpen:
		assert.NotZero(t, byOrigin["open"], "FailOpen: admitted open")
		assert.Zero(t, failures.Load(), "FailOpen: ErrUnavailable")
	case pgstore.FailLocal:
		assert.NotZero(t, byOrigin["local"], "FailLocal: admitted locally")
		assert.Zero(t, failures.Load(), "FailLocal: ErrUnavailable")
	}
}
