package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// TestExactlyOnce: 100,000 jobs with random outcomes (value, error, panic,
// cancelled context, retry-after) from several producers, and Shutdown at
// a random moment with a short deadline: every accepted job is resolved
// exactly once and the counters add up.
func TestExactlyOnce(t *testing.T) {
	for seed := range uint64(2) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			testExactlyOnce(t, seed)
		})
	}
}

func testExactlyOnce(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	keyLimit := func(key string) bucket.Limit {
		switch key {
		case "k0":
			return bucket.PerSecond(20_000).WithBurst(20).WithQuota(1000, 100*time.Millisecond)
		case "k1":
			return bucket.PerSecond(5000).WithBurst(5)
		}
		return bucket.Unlimited
	}
	lim := newLimiter(t, bucket.PerSecond(1), bucket.WithKeyLimit(keyLimit))
	var retries sync.Map
	d, err := dispatcher.New(func(ctx context.Context, j task) (int, error) {
		switch j.n % 7 {
		case 0:
			return 0, errors.New("failed")
		case 1:
			panic("boom")
		case 2:
			if _, loaded := retries.LoadOrStore(j.n, true); !loaded {
				return 0, &retryAfterError{delay: time.Millisecond}
			}
		case 3:
			select { // a slow job that honours its context
			case <-time.After(time.Millisecond):
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		return j.n, nil
	}, taskKey, dispatcher.WithWorkers(8), dispatcher.WithQueue(2000), dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(1000))
	require.NoError(t, err)

	const jobs, producers = 100_000, 4
	var (
		mu       sync.Mutex
		futures  []*dispatcher.Future[int]
		accepted atomic.Int64
		wg       sync.WaitGroup
	)
	stopAt := rng.Int64N(jobs)
	var produced atomic.Int64
	shutdownDone := make(chan error, 1)
	for p := range producers {
		wg.Go(func() {
			prng := rand.New(rand.NewPCG(seed, uint64(p)))
			for i := p; i < jobs; i += producers {
				if produced.Add(1) == stopAt {
					deadline := time.Duration(prng.IntN(20)) * time.Millisecond
					go func() {
						ctx, cancel := context.WithTimeout(context.Background(), deadline)
						defer cancel()
						shutdownDone <- d.Shutdown(ctx)
					}()
				}
				ctx := context.Background()
				var cancel context.CancelFunc
				if prng.IntN(10) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(prng.IntN(2000))*time.Microsecond)
				}
				f, err := d.Submit(ctx, task{key: fmt.Sprint("k", prng.IntN(5)), n: i})
				switch {
				case err == nil:
					accepted.Add(1)
					mu.Lock()
					futures = append(futures, f)
					mu.Unlock()
				case errors.Is(err, dispatcher.ErrClosed), errors.Is(err, context.DeadlineExceeded):
				default:
					assert.NoError(t, err, "Submit")
				}
				if cancel != nil {
					defer cancel()
				}
			}
		})
	}
	wg.Wait()
	if err := <-shutdownDone; !errors.Is(err, context.DeadlineExceeded) {
		require.NoError(t, err, "Shutdown")
	}
	d.Shutdown(context.Background()) // idempotent; waits for the end
	for i, f := range futures {
		select {
		case <-f.Done():
		default:
			require.Fail(t, "future unresolved after Shutdown", "future %d", i)
		}
		_, err := f.Result()
		require.NotErrorIs(t, err, dispatcher.ErrPending, "future %d", i)
	}
	st := d.Stats()
	assert.Equal(t, accepted.Load(), st.Submitted, "Stats.Submitted, want the jobs accepted")
	assert.Equal(t, st.Submitted, st.Succeeded+st.Failed+st.Cancelled, "succeeded + failed + cancelled after Shutdown (%+v)", st)
	assert.Zero(t, st.Queued, "Stats.Queued after Shutdown")
	assert.Zero(t, st.Running, "Stats.Running after Shutdown")
	var keySum int64
	for i := range 5 {
		key := fmt.Sprint("k", i)
		k, ok := d.KeyStats(key)
		if !ok {
			continue // no job of this key was accepted
		}
		keySum += k.Succeeded + k.Failed + k.Cancelled
		assert.Equal(t, k.Submitted, k.Succeeded+k.Failed+k.Cancelled, "key %s: succeeded + failed + cancelled (%+v)", key, k)
	}
	assert.Equal(t, st.Submitted, keySum, "per-key outcomes summed")
	t.Logf("accepted %d of %d; %d succeeded, %d failed, %d cancelled, %d retried", accepted.Load(), jobs, st.Succeeded, st.Failed, st.Cancelled, st.Retried)
}

// TestShutdownDrains: Shutdown with time to spare runs every queued job,
// as the limits admit them.
func TestShutdownDrains(t *testing.T) {
	lim := newLimiter(t, bucket.PerSecond(10_000).WithBurst(10))
	var ran atomic.Int64
	d, err := dispatcher.New(func(_ context.Context, n int) (int, error) {
		ran.Add(1)
		return n, nil
	}, nil, dispatcher.WithLimiter(lim), dispatcher.WithQueue(500))
	require.NoError(t, err)
	for i := range 500 {
		_, err := d.Submit(context.Background(), i)
		require.NoError(t, err)
	}
	require.NoError(t, d.Shutdown(context.Background()), "Shutdown")
	assert.EqualValues(t, 500, ran.Load(), "jobs Shutdown drained")
}

// TestCloseCancelsRunning: Close cancels running handlers' contexts and
// resolves queued jobs with ErrClosed.
func TestCloseCancelsRunning(t *testing.T) {
	for _, withLimiter := range []bool{false, true} {
		t.Run(fmt.Sprint("limiter=", withLimiter), func(t *testing.T) {
			opts := []dispatcher.Option{dispatcher.WithWorkers(2)}
			if withLimiter {
				opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000).WithBurst(10))))
			}
			started := make(chan struct{}, 2)
			d, err := dispatcher.New(func(ctx context.Context, n int) (int, error) {
				started <- struct{}{}
				<-ctx.Done()
				return 0, context.Cause(ctx)
			}, nil, opts...)
			require.NoError(t, err)
			var fs []*dispatcher.Future[int]
			for i := range 10 {
				f, err := d.Submit(context.Background(), i)
				require.NoError(t, err)
				fs = append(fs, f)
			}
			<-started
			<-started
			d.Close()
			var cancelled, closed int
			for _, f := range fs {
				_, err := f.Wait(context.Background())
				switch {
				case errors.Is(err, dispatcher.ErrClosed):
					closed++
				case errors.Is(err, context.Canceled):
					cancelled++
				default:
					assert.Fail(t, "job resolved with neither ErrClosed nor context.Canceled", "error %v", err)
				}
			}
			assert.Equal(t, 2, cancelled, "running jobs Close cancelled")
			assert.Equal(t, 8, closed, "queued jobs Close resolved with ErrClosed")
		})
	}
}

// TestMemoryFlat: a million jobs through a small queue do not grow the heap.
func TestMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes a million jobs")
	}
	for _, withLimiter := range []bool{false, true} {
		t.Run(fmt.Sprint("limiter=", withLimiter), func(t *testing.T) {
			opts := []dispatcher.Option{dispatcher.WithWorkers(4), dispatcher.WithQueue(10)}
			total := 1_000_000
			var key func(int) string
			if withLimiter {
				total = 200_000
				opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000))))
				key = func(n int) string { return fmt.Sprint("k", n%100) }
			}
			d := newDispatcher(t, double, key, opts...)
			heap := func() uint64 {
				runtime.GC()
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				return m.HeapAlloc
			}
			push := func(n int) {
				for i := range n {
					_, err := d.Submit(context.Background(), i)
					require.NoError(t, err)
				}
			}
			push(total / 10)
			before := heap()
			push(total - total/10)
			after := heap()
			assert.LessOrEqual(t, after, before+1<<20, "heap after %d more jobs, want flat from %d bytes", total-total/10, before)
		})
	}
}

// TestShutdownWakesBlockedSubmit: Submit blocked on a full queue returns
// ErrClosed when Shutdown begins, and Shutdown keeps its deadline.
func TestShutdownWakesBlockedSubmit(t *testing.T) {
	for _, withLimiter := range []bool{false, true} {
		t.Run(fmt.Sprint("limiter=", withLimiter), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				opts := []dispatcher.Option{dispatcher.WithWorkers(1), dispatcher.WithQueue(1)}
				if withLimiter {
					opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000))))
				}
				d, err := dispatcher.New(func(ctx context.Context, n int) (int, error) {
					select {
					case <-release:
					case <-ctx.Done():
					}
					return n, nil
				}, nil, opts...)
				require.NoError(t, err)
				defer close(release)
				for i := range 2 { // one running, one queued
					_, err := d.Submit(context.Background(), i)
					require.NoError(t, err)
					synctest.Wait()
				}
				blocked := make(chan error, 1)
				go func() {
					_, err := d.Submit(context.Background(), 2)
					blocked <- err
				}()
				synctest.Wait()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				begin := time.Now()
				assert.ErrorIs(t, d.Shutdown(ctx), context.DeadlineExceeded, "Shutdown with a running job that waits for release")
				assert.LessOrEqual(t, time.Since(begin), time.Second, "Shutdown's time with a 1s deadline")
				assert.ErrorIs(t, <-blocked, dispatcher.ErrClosed, "blocked Submit")
			})
		})
	}
}

// TestHardStopWhileRequeuing: a job answered retry-after whose worker is
// about to queue it again when a hard stop resolves the queues resolves
// at once with the handler's error, and Close returns without waiting out
// the pause.
func TestHardStopWhileRequeuing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const pause = time.Minute
		retryErr := &retryAfterError{delay: pause, err: errors.New("429")}
		d, err := dispatcher.New(func(context.Context, int) (int, error) { return 0, retryErr }, nil,
			dispatcher.WithWorkers(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000))))
		require.NoError(t, err)
		var once atomic.Bool
		dispatcher.SetRequeuing(d, func() {
			if once.CompareAndSwap(false, true) {
				go d.Close()
				synctest.Wait() // the hard stop has resolved the queues
			}
		})
		start := time.Now()
		f, err := d.Submit(context.Background(), 1)
		require.NoError(t, err)
		_, err = f.Wait(context.Background())
		assert.ErrorIs(t, err, retryErr, "job, want the handler's retry-after error")
		d.Close()
		require.True(t, once.Load(), "the job was never about to be queued again: the test exercised nothing")
		assert.Less(t, time.Since(start), pause, "Close's time: it waited out the retry-after pause")
	})
}

// TestHardStopGivesBackBookings: a hard stop gives back every booking of a
// key, not only the latest, so that other processes sharing the backend
// may use the slots at once.
func TestHardStopGivesBackBookings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(10))
		d, err := dispatcher.New(func(ctx context.Context, n int) (int, error) {
			<-ctx.Done() // the first job runs until the stop
			return 0, context.Cause(ctx)
		}, func(int) string { return "k" }, dispatcher.WithWorkers(1), dispatcher.WithLimiter(lim), dispatcher.WithBookAhead(time.Second))
		require.NoError(t, err)
		ctx := context.Background()
		for i := range 5 {
			_, err := d.Submit(ctx, i)
			require.NoError(t, err)
		}
		synctest.Wait() // job 0 runs; jobs 1-4 are booked at 100, 200, 300, 400ms
		d.Close()
		time.Sleep(150 * time.Millisecond)
		ok, err := lim.Allow(ctx, "k")
		require.NoError(t, err)
		assert.True(t, ok, "after a hard stop, Allow at 150ms: the bookings of 100-400ms were not all given back")
	})
}
