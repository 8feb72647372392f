// Package faulttest is the test that stops a store's server under load and
// starts it again, for the stores that share buckets through a server
// (redisstore, pgstore), under each of their failure policies.
package faulttest

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
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Limit is the limit of each of the test's keys.
var Limit = bucket.PerSecond(200).WithBurst(4).WithQuota(60, 250*time.Millisecond)

// Config is the store under test and its server.
type Config struct {
	// Store has the failure policy Policy and a RetryInterval of about
	// 20ms, and fails fast (within a second) while its server is down.
	Store driver.Backend
	// Policy is the name of the store's policy: FailClosed, FailOpen or
	// FailLocal.
	Policy string
	// Unavailable is the store's error for a server that cannot serve.
	Unavailable error
	// IsLocal reports whether an admission was decided by FailLocal's
	// local buckets.
	IsLocal func(driver.Decision) bool
	// Stop stops the server and returns once it has stopped; Start starts
	// it again.
	Stop, Start func() error
}

type start struct {
	key    int
	d      driver.Decision
	origin string // "server", "local" or "open"
}

// Run runs the fault test on cfg.Store: 48 goroutines admit through
// Admit and 8 wait through bucket.Limiter.Wait on four keys (of any
// bytes) while the server is stopped for 600ms and started again. Every
// call must return, errors must match cfg.Unavailable (or be the
// caller's own deadline), admission must resume within 5s of the restart,
// and the starts the server admitted before the stop, those it admitted
// after the restart, and those the local fallback admitted must each
// conform to Limit: only what the restart forgot may be admitted twice.
// The policy's own promise is checked too.
func Run(t *testing.T, cfg Config) {
	s := cfg.Store
	lim, err := bucket.NewLimiter(s, Limit)
	require.NoError(t, err)
	keys := []string{"a", "b", "c{x}", "d\x00"}

	var (
		stop      atomic.Bool
		mu        sync.Mutex
		starts    []start
		badErrs   []error
		calls     atomic.Int64
		failures  atomic.Int64 // ErrUnavailable
		slowest   atomic.Int64 // ns
		wg        sync.WaitGroup
		resumedAt atomic.Int64 // Now of the first admission the server decided after the restart
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
		case errors.Is(err, cfg.Unavailable):
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
			req := driver.Request{Key: keys[k], Limit: backendtest.Limit(Limit), Cost: 1, MaxWait: 30 * time.Millisecond}
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
					origin := "server"
					if cfg.IsLocal(d) {
						origin = "local"
					} else if d.Booking.TAT == 0 {
						origin = "open"
					} else if r := restartAt.Load(); r != 0 && d.Now > r {
						resumedAt.CompareAndSwap(0, d.Now)
					}
					mu.Lock()
					starts = append(starts, start{k, d, origin})
					mu.Unlock()
					// At least a millisecond: FailOpen admits at once, and 48
					// workers that never sleep starve the round trips that
					// probe the server (and a proxy in the process).
					time.Sleep(min(max(d.Wait, time.Millisecond), 30*time.Millisecond))
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
				} else {
					time.Sleep(time.Millisecond) // FailOpen's Wait returns at once
				}
			}
		}()
	}

	time.Sleep(400 * time.Millisecond)
	require.NoError(t, cfg.Stop())
	killAt := time.Now().UnixNano() // Stop returns once the server has exited
	time.Sleep(600 * time.Millisecond)
	restartAt.Store(time.Now().UnixNano())
	require.NoError(t, cfg.Start())
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
	require.NotZero(t, resumedAt.Load(), "no admission by the server within 5s of its restart")
	t.Logf("%d calls, %d ErrUnavailable, slowest %v; the server back in %v",
		calls.Load(), failures.Load(), time.Duration(slowest.Load()), time.Duration(resumedAt.Load()-restartAt.Load()))
	// Every call's ctx ends within 2s; one that outlives it by far ignored it.
	assert.LessOrEqual(t, time.Duration(slowest.Load()), 5*time.Second, "slowest call, with a ctx of 2s")

	byOrigin := map[string]int{}
	groups := map[string][]backendtest.Start{}
	for _, st := range starts {
		group := st.origin
		if st.origin == "server" {
			switch {
			case st.d.Now < killAt:
				group = "server before the stop"
			case st.d.Now >= restartAt.Load():
				group = "server after the restart"
			default:
				assert.Fail(t, fmt.Sprintf("the server decided at %v, while it was down", time.Unix(0, st.d.Now)))
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
		assert.NoError(t, backendtest.Check(Limit, ss), group)
	}
	assert.NotZero(t, byOrigin["server before the stop"], "admissions by the server before the kill: %v", byOrigin)
	assert.NotZero(t, byOrigin["server after the restart"], "admissions by the server after the restart: %v", byOrigin)
	switch cfg.Policy {
	case "FailClosed":
		assert.NotZero(t, failures.Load(), "FailClosed: calls failed with ErrUnavailable while the server was down")
		assert.Zero(t, byOrigin["open"]+byOrigin["local"], "FailClosed admitted without the server: %v", byOrigin)
	case "FailOpen":
		assert.NotZero(t, byOrigin["open"], "FailOpen: admitted open")
		assert.Zero(t, failures.Load(), "FailOpen: ErrUnavailable")
	case "FailLocal":
		assert.NotZero(t, byOrigin["local"], "FailLocal: admitted locally")
		assert.Zero(t, failures.Load(), "FailLocal: ErrUnavailable")
	}
}
