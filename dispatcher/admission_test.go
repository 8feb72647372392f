package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
)

type task struct {
	key string
	n   int
}

func taskKey(t task) string { return t.key }

// TestNoHeadOfLineBlocking: key A at 1/s with 100 queued jobs does not hold
// up key B (unlimited) and its 10,000 jobs on 4 workers.
func TestNoHeadOfLineBlocking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		limA := bucket.PerSecond(1)
		lim := newLimiter(t, limA, bucket.WithKeyLimit(func(key string) bucket.Limit {
			if key == "A" {
				return limA
			}
			return bucket.Unlimited
		}))
		rec := newStarts()
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			rec.record(j.key)
			return j.n, nil
		}, taskKey, dispatcher.WithWorkers(4), dispatcher.WithQueue(20_000), dispatcher.WithLimiter(lim))

		begin := time.Now()
		var fa, fb []*dispatcher.Future[int]
		for i := range 100 {
			f, err := d.Submit(context.Background(), task{"A", i})
			require.NoError(t, err)
			fa = append(fa, f)
		}
		for i := range 10_000 {
			f, err := d.Submit(context.Background(), task{"B", i})
			require.NoError(t, err)
			fb = append(fb, f)
		}
		for _, f := range fb {
			_, err := f.Wait(context.Background())
			require.NoError(t, err)
		}
		assert.Less(t, time.Since(begin), 100*time.Millisecond, "key B's 10,000 jobs behind key A")
		for _, f := range fa {
			_, err := f.Wait(context.Background())
			require.NoError(t, err)
		}
		took := time.Since(begin)
		assert.GreaterOrEqual(t, took, 99*time.Second, "key A's 100 jobs at 1/s")
		assert.LessOrEqual(t, took, 100*time.Second, "key A's 100 jobs at 1/s")
		rec.check(t, "A", limA, 100)
	})
}

// TestStartsConform records handler start times per key and checks them
// with the reference checker: with free workers, saturated workers, and a
// scheduler that stalls between admitting jobs and handing them over.
func TestStartsConform(t *testing.T) {
	lim := bucket.PerSecond(50).WithBurst(3).WithQuota(40, time.Second)
	tests := []struct {
		name    string
		workers int
		work    time.Duration
		stall   bool
	}{
		{"free workers", 16, time.Millisecond, false},
		{"saturated workers", 2, 70 * time.Millisecond, false},
		{"scheduler stalls", 16, time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := newStarts()
				l := newLimiter(t, lim)
				d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
					rec.record(j.key)
					time.Sleep(tt.work)
					return j.n, nil
				}, taskKey, dispatcher.WithWorkers(tt.workers), dispatcher.WithQueue(1000), dispatcher.WithLimiter(l))
				if tt.stall {
					var n atomic.Int64
					dispatcher.SetAfterAdmit(d, func() {
						if n.Add(1)%5 == 0 {
							time.Sleep(20 * time.Millisecond)
						}
					})
				}
				keys := []string{"a", "b", "c"}
				var fs []*dispatcher.Future[int]
				for i := range 120 {
					for _, k := range keys {
						f, err := d.Submit(context.Background(), task{k, i})
						require.NoError(t, err)
						fs = append(fs, f)
					}
				}
				for _, f := range fs {
					_, err := f.Wait(context.Background())
					require.NoError(t, err)
				}
				for _, k := range keys {
					rec.check(t, k, lim, 120)
				}
			})
		})
	}
}

// TestOneKeyStartsInOrder: jobs of one key start in submission order.
func TestOneKeyStartsInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var order []int
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			order = append(order, j.n) // one worker: no race
			return 0, nil
		}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100).WithBurst(5))))
		var fs []*dispatcher.Future[int]
		for i := range 50 {
			f, _ := d.Submit(context.Background(), task{"k", i})
			fs = append(fs, f)
		}
		for _, f := range fs {
			f.Wait(context.Background())
		}
		for i, n := range order {
			require.Equal(t, i, n, "job run by start %d, want submission order", i)
		}
	})
}

// TestRetryAfterPausesKey: a handler that answers "retry after 200ms" once
// for key A: no A job starts during the pause, B is unaffected, the job
// then succeeds and no failure is counted.
func TestRetryAfterPausesKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newStarts()
		var refusedAt atomic.Int64
		var once atomic.Bool
		begin := time.Now()
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			rec.record(j.key)
			if j.key == "A" && j.n == 3 && once.CompareAndSwap(false, true) {
				refusedAt.Store(int64(time.Since(begin)))
				return 0, &retryAfterError{delay: 200 * time.Millisecond, err: errors.New("429")}
			}
			return j.n, nil
		}, taskKey, dispatcher.WithWorkers(4), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100))), dispatcher.WithKeyStats(1000))
		var fs []*dispatcher.Future[int]
		for i := range 20 {
			for _, k := range []string{"A", "B"} {
				f, err := d.Submit(context.Background(), task{k, i})
				require.NoError(t, err)
				fs = append(fs, f)
			}
		}
		for _, f := range fs {
			_, err := f.Wait(context.Background())
			require.NoError(t, err)
		}
		st := d.Stats()
		assert.EqualValues(t, 40, st.Succeeded, "Stats.Succeeded")
		assert.EqualValues(t, 1, st.Retried, "Stats.Retried")
		assert.Zero(t, st.Failed, "Stats.Failed")
		refused := refusedAt.Load()
		var bDuringPause int
		for _, s := range rec.at["A"] {
			assert.False(t, s.At > refused && s.At < refused+int64(200*time.Millisecond),
				"an A job started %v into the 200ms pause", time.Duration(s.At-refused))
		}
		for _, s := range rec.at["B"] {
			if s.At > refused && s.At < refused+int64(200*time.Millisecond) {
				bDuringPause++
			}
		}
		assert.Positive(t, bDuringPause, "B jobs started during A's pause")
		a, ok := d.KeyStats("A")
		require.True(t, ok, "KeyStats(A)")
		assert.EqualValues(t, 1, a.Retried, "KeyStats(A).Retried")
		assert.Zero(t, a.Failed, "KeyStats(A).Failed")
	})
}

// TestRetryAfterPausesBackend: a retry-after pauses its key in the
// limiter's backend, where every process sharing it sees the pause (here
// through the limiter itself, as another process's would), and no other
// key.
func TestRetryAfterPausesBackend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(1000).WithBurst(10))
		var once atomic.Bool
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			if once.CompareAndSwap(false, true) {
				return 0, &retryAfterError{delay: time.Second}
			}
			return j.n, nil
		}, taskKey, dispatcher.WithLimiter(lim))
		ctx := context.Background()
		f, err := d.Submit(ctx, task{"A", 1})
		require.NoError(t, err)
		synctest.Wait() // the handler answered; the job waits out the pause
		time.Sleep(500 * time.Millisecond)
		ok, err := lim.Allow(ctx, "A")
		require.NoError(t, err)
		assert.False(t, ok, "Allow(A) half way through the retry-after: the backend was not paused")
		ok, err = lim.Allow(ctx, "B")
		require.NoError(t, err)
		assert.True(t, ok, "Allow(B) during A's pause")
		_, err = f.Wait(ctx)
		assert.NoError(t, err)
	})
}

// TestRequeueBound: a handler that always asks for a retry fails after
// WithMaxRequeues requeues, with an error matching ErrTooManyRequeues.
func TestRequeueBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int64
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			runs.Add(1)
			return 0, &retryAfterError{delay: time.Second}
		}, taskKey, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100))), dispatcher.WithMaxRequeues(3))
		_, err := d.Do(context.Background(), task{"A", 1})
		assert.ErrorIs(t, err, dispatcher.ErrTooManyRequeues)
		assert.ErrorAs(t, err, new(*retryAfterError), "Do, want the handler's retry-after error wrapped")
		assert.EqualValues(t, 4, runs.Load(), "handler runs, want 1 + 3 requeues")
	})
}

// TestCancelDuringRetryPause: a job put back by a retry-after whose
// context ends during the pause is resolved with the context's error at
// once, not when the pause is over.
func TestCancelDuringRetryPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan struct{}, 1)
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			ran <- struct{}{}
			return 0, &retryAfterError{delay: time.Hour}
		}, taskKey, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100))))
		f, err := d.Submit(ctx, task{"A", 1})
		require.NoError(t, err)
		<-ran
		synctest.Wait() // the job is back in its key's queue, paused for an hour
		start := time.Now()
		cancel()
		synctest.Wait()
		_, err = f.Result()
		require.ErrorIs(t, err, context.Canceled, "Result after cancel")
		assert.Zero(t, time.Since(start), "time from the context's end to the job's")
		st := d.Stats()
		assert.EqualValues(t, 1, st.Cancelled, "Stats.Cancelled")
		assert.EqualValues(t, 1, st.Retried, "Stats.Retried")
	})
}

// TestCancelWhileHanded: a job whose context ends after it was admitted
// and handed to a worker, while the worker is still busy, is resolved with
// the context's error when the worker reaches it, on time or late: it
// never runs, and it is not queued again (here behind a job that asks to
// retry in an hour).
func TestCancelWhileHanded(t *testing.T) {
	for _, late := range []time.Duration{0, 10 * time.Millisecond} {
		t.Run(fmt.Sprintf("late=%v", late), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				var ranCancelled atomic.Int32
				d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
					if j.n == 0 {
						<-release
						return 0, &retryAfterError{delay: time.Hour}
					}
					ranCancelled.Add(1)
					return j.n, nil
				}, taskKey, dispatcher.WithWorkers(1),
					dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000).WithBurst(100))))
				f1, cancel := submitPair(t, d)
				synctest.Wait() // job 0 runs; job 1 is admitted and handed, waiting for the worker
				cancel()
				synctest.Wait()
				time.Sleep(late)
				close(release)
				synctest.Wait()
				_, err := f1.Result()
				assert.ErrorIs(t, err, context.Canceled, "Result once the worker was free")
				assert.Zero(t, ranCancelled.Load(), "runs of the cancelled job")
				st := d.Stats()
				assert.EqualValues(t, 1, st.Cancelled, "Stats.Cancelled")
				assert.EqualValues(t, 1, st.Queued, "Stats.Queued, want job 0, paused")
			})
		})
	}
}

// submitPair submits job A0, then job A1 with a context for the caller
// to cancel.
func submitPair(t *testing.T, d *dispatcher.Dispatcher[task, int]) (*dispatcher.Future[int], context.CancelFunc) {
	t.Helper()
	_, err := d.Submit(context.Background(), task{"A", 0})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	f1, err := d.Submit(ctx, task{"A", 1})
	require.NoError(t, err)
	return f1, cancel
}

// TestCancelBookedNotHeldByRefund: a booked job whose context ends is
// resolved at once; giving its booking back to a slow backend happens
// after.
func TestCancelBookedNotHeldByRefund(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) { return j.n, nil }, taskKey, dispatcher.WithBookAhead(2*time.Second),
			dispatcher.WithLimiter(newSlowRefundLimiter(t, bucket.PerSecond(1), time.Second)))
		f1, cancel := submitPair(t, d)
		synctest.Wait() // job 1 is booked a second ahead
		cancel()
		synctest.Wait()
		_, err := f1.Result()
		assert.ErrorIs(t, err, context.Canceled, "Result at once after cancel")
	})
}

// TestImpossibleJobFreesPlace: a job its limit can never admit resolves
// with ErrImpossible and gives its place in a full queue to a Submit
// waiting for one.
func TestImpossibleJobFreesPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d, err := dispatcher.NewWithCost(func(_ context.Context, j task) (int, error) { return j.n, nil },
			taskKey, func(j task) int { return j.n },
			dispatcher.WithQueue(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1))))
		require.NoError(t, err)
		defer d.Close()
		stall := make(chan struct{})
		dispatcher.SetAfterAdmit(d, func() { <-stall })
		f0, err := d.Submit(context.Background(), task{"A", 10}) // cost 10, burst 1
		require.NoError(t, err)
		synctest.Wait() // its admission is decided; the queue is full
		submitted := make(chan error, 1)
		go func() {
			_, err := d.Submit(context.Background(), task{"A", 1})
			submitted <- err
		}()
		synctest.Wait()
		close(stall)
		synctest.Wait()
		_, err = f0.Result()
		require.ErrorIs(t, err, bucket.ErrImpossible, "the impossible job")
		wantReturned(t, submitted, "the Submit waiting for the impossible job's place")
	})
}

// wantReturned fails t unless a nil error is waiting in ch: the call that
// was blocked has returned, and succeeded.
func wantReturned(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		assert.NoError(t, err, what)
	default:
		assert.Fail(t, what+" still blocks")
	}
}

// TestCancelBeforeStart: a queued job whose context ends is resolved with
// the context's error, frees its place, and gives back its booking.
func TestCancelBeforeStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(1))
		// Booking up to 1.5s ahead: the first job below is booked for
		// t0+1s, the second (t0+2s) is not.
		d := newDispatcher(t, double, nil, dispatcher.WithLimiter(lim), dispatcher.WithQueue(2),
			dispatcher.WithBookAhead(1500*time.Millisecond))
		_, err := d.Do(context.Background(), 1) // uses the burst
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		f1, _ := d.Submit(ctx, 2) // booked for t0+1s
		f2, _ := d.Submit(ctx, 3)
		_, err = d.TrySubmit(context.Background(), 4)
		require.ErrorIs(t, err, dispatcher.ErrQueueFull, "TrySubmit on a full queue")
		synctest.Wait()
		cancel()
		for _, f := range []*dispatcher.Future[int]{f1, f2} {
			_, err := f.Wait(context.Background())
			assert.ErrorIs(t, err, context.Canceled, "cancelled job")
		}
		// The booking at t0+1s was refunded: the next job takes that slot.
		begin := time.Now()
		_, err = d.Do(context.Background(), 5)
		require.NoError(t, err)
		assert.LessOrEqual(t, time.Since(begin), time.Second, "wait of the job after a refunded booking")
		st := d.Stats()
		assert.EqualValues(t, 2, st.Cancelled, "Stats.Cancelled")
		assert.Zero(t, st.Queued, "Stats.Queued")
	})
}

// TestCancelFreesPlaceWithoutLimiter: without a limiter too, a queued job
// whose context ends gives its place back at once, though it is still in
// the workers' channel: a blocked Submit goes on, TrySubmit finds room.
func TestCancelFreesPlaceWithoutLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var ran atomic.Int32
		d := newDispatcher(t, func(_ context.Context, n int) (int, error) {
			ran.Add(1)
			if n == 0 {
				<-release
			}
			return n, nil
		}, nil, dispatcher.WithWorkers(1), dispatcher.WithQueue(2))
		_, err := d.Submit(context.Background(), 0)
		require.NoError(t, err)
		synctest.Wait() // job 0 runs
		ctx, cancel := context.WithCancel(context.Background())
		var cancelled []*dispatcher.Future[int]
		for i := 1; i <= 2; i++ {
			f, err := d.Submit(ctx, i)
			require.NoError(t, err)
			cancelled = append(cancelled, f)
		}
		_, err = d.TrySubmit(context.Background(), 3)
		require.ErrorIs(t, err, dispatcher.ErrQueueFull, "TrySubmit on a full queue")
		blocked := make(chan error, 1)
		go func() {
			_, err := d.Submit(context.Background(), 4)
			blocked <- err
		}()
		synctest.Wait()
		cancel()
		synctest.Wait()
		for _, f := range cancelled {
			_, err := f.Result()
			assert.ErrorIs(t, err, context.Canceled, "cancelled job")
		}
		wantReturned(t, blocked, "the Submit blocked until two queued jobs were cancelled")
		_, err = d.TrySubmit(context.Background(), 5)
		assert.NoError(t, err, "TrySubmit with a place free")
		close(release)
		require.NoError(t, d.Shutdown(context.Background()))
		assert.EqualValues(t, 3, ran.Load(), "handler runs, want jobs 0, 4 and 5")
		st := d.Stats()
		assert.EqualValues(t, 2, st.Cancelled, "Stats.Cancelled")
		assert.EqualValues(t, 3, st.Succeeded, "Stats.Succeeded")
	})
}

// TestBackpressure: Submit blocks while the queue is full and honours its
// context; TrySubmit fails at once.
func TestBackpressure(t *testing.T) {
	for _, withLimiter := range []bool{false, true} {
		t.Run(fmt.Sprint("limiter=", withLimiter), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				var once sync.Once
				defer once.Do(func() { close(release) }) // a failing check must not leave the worker blocked
				opts := []dispatcher.Option{dispatcher.WithWorkers(1), dispatcher.WithQueue(10)}
				if withLimiter {
					opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000).WithBurst(1000))))
				}
				d := newDispatcher(t, func(_ context.Context, n int) (int, error) {
					<-release
					return n, nil
				}, nil, opts...)
				for i := range 11 { // one running, ten queued
					_, err := d.Submit(context.Background(), i)
					require.NoError(t, err)
					synctest.Wait()
				}
				_, err := d.TrySubmit(context.Background(), 11)
				require.ErrorIs(t, err, dispatcher.ErrQueueFull, "TrySubmit on a full queue")
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_, err = d.Submit(ctx, 12)
				require.ErrorIs(t, err, context.DeadlineExceeded, "Submit on a full queue with a 1s deadline")
				var submitted atomic.Bool
				go func() {
					d.Submit(context.Background(), 13)
					submitted.Store(true)
				}()
				synctest.Wait()
				require.False(t, submitted.Load(), "Submit on a full queue returned")
				release <- struct{}{} // one job finishes: room for one
				synctest.Wait()
				require.True(t, submitted.Load(), "Submit still blocked after room was made")
				once.Do(func() { close(release) })
			})
		})
	}
}

// TestIdleKeysForgotten: the scheduler holds a key only while it has jobs
// waiting: memory follows the keys in use, not the keys ever seen. With
// WithKeyStats a key's figures are kept a minute after its last job.
func TestIdleKeysForgotten(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  []dispatcher.Option
		after int // keys known once the jobs are done
	}{
		{"plain", nil, 0},
		{"WithKeyStats", []dispatcher.Option{dispatcher.WithKeyStats(1000)}, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				gate := make(chan struct{})
				opts := append([]dispatcher.Option{dispatcher.WithWorkers(4),
					dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000).WithBurst(100)))}, tc.opts...)
				d := newDispatcher(t, func(_ context.Context, j task) (int, error) { <-gate; return j.n, nil }, taskKey, opts...)
				var fs []*dispatcher.Future[int]
				for i := range 1000 {
					f, err := d.Submit(context.Background(), task{fmt.Sprint("tenant-", i), i})
					require.NoError(t, err)
					fs = append(fs, f)
				}
				synctest.Wait()
				// 4 jobs run and up to a batch more are booked for the
				// workers; the others wait in their keys' queues.
				assert.Greater(t, dispatcher.KeyCount(d), 900, "keys known while their jobs wait")
				close(gate)
				for _, f := range fs {
					_, err := f.Wait(context.Background())
					require.NoError(t, err)
				}
				synctest.Wait()
				assert.Equal(t, tc.after, dispatcher.KeyCount(d), "keys known after 1,000 keys' jobs")
				time.Sleep(2 * time.Minute)
				_, err := d.Do(context.Background(), task{"fresh", 0}) // wakes the scheduler, which sweeps
				require.NoError(t, err)
				assert.LessOrEqual(t, dispatcher.KeyCount(d), 1, "keys known two minutes later, want at most the key in use")
			})
		})
	}
}

// noPause is a memory backend whose pauses fail: only the dispatcher's
// own record of a retry-after holds the key.
type noPause struct{ *memstore.Store }

func (noPause) Pause(context.Context, string, time.Duration) error {
	return errors.New("pause lost")
}

// TestIdlePausedKeyKept: a retry-after holds its key in this process even
// when the key's queue empties meanwhile (here its job is cancelled
// during the pause), so that a job submitted later still waits for the
// pause's end, even if the backend lost the pause. The key is forgotten
// once the pause is over.
func TestIdlePausedKeyKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store, err := memstore.New(memstore.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { store.Close() })
		lim, err := bucket.NewLimiter(noPause{store}, bucket.PerSecond(100))
		require.NoError(t, err)
		begin := time.Now()
		var once atomic.Bool
		var startedAt atomic.Int64
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			if once.CompareAndSwap(false, true) {
				return 0, &retryAfterError{delay: 30 * time.Second}
			}
			startedAt.Store(int64(time.Since(begin)))
			return j.n, nil
		}, taskKey, dispatcher.WithLimiter(lim))
		ctx, cancel := context.WithCancel(context.Background())
		f, err := d.Submit(ctx, task{"A", 1})
		require.NoError(t, err)
		synctest.Wait() // answered retry-after: back in A's queue for the pause
		time.Sleep(time.Second)
		cancel()
		_, err = f.Wait(context.Background())
		require.ErrorIs(t, err, context.Canceled)
		synctest.Wait()
		assert.Equal(t, 1, dispatcher.KeyCount(d), "keys known during A's pause with its queue empty")
		_, err = d.Do(context.Background(), task{"A", 2})
		require.NoError(t, err)
		assert.GreaterOrEqual(t, time.Duration(startedAt.Load()), 30*time.Second,
			"A's next job started during the pause")
		synctest.Wait()
		assert.Zero(t, dispatcher.KeyCount(d), "keys known once A's pause is over and its job done")
	})
}

// slowRefund is a memory backend whose refunds take a long round trip.
type slowRefund struct {
	*memstore.Store
	delay time.Duration
}

func (s slowRefund) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
	}
	return s.Store.Refund(ctx, req, d)
}

// newSlowRefundLimiter returns a limiter at lim on a memory store whose
// refunds take delay.
func newSlowRefundLimiter(t *testing.T, lim bucket.Limit, delay time.Duration) *bucket.Limiter {
	t.Helper()
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	l, err := bucket.NewLimiter(slowRefund{store, delay}, lim)
	require.NoError(t, err)
	return l
}

// stallOnce stalls d's scheduler for stall once, after its next batch is
// decided: the jobs it admits reach their workers that much late.
func stallOnce[T, R any](d *dispatcher.Dispatcher[T, R], stall time.Duration) {
	var once atomic.Bool
	dispatcher.SetAfterAdmit(d, func() {
		if once.CompareAndSwap(false, true) {
			time.Sleep(stall)
		}
	})
}

// TestLateGiveBackHoldsNoOtherKey: a job that reaches its worker late
// gives its admission back while its key waits, and its worker goes on at
// once with other keys' jobs, however long the backend takes to refund.
func TestLateGiveBackHoldsNoOtherKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newSlowRefundLimiter(t, bucket.PerSecond(1000), 5*time.Second)
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			time.Sleep(time.Millisecond)
			return j.n, nil
		}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(1000))
		ctx := context.Background()
		for i := range 64 { // time the handler: then nothing is admitted ahead of the worker
			_, err := d.Do(ctx, task{"warm", i})
			require.NoError(t, err)
		}
		stallOnce(d, 50*time.Millisecond) // A reaches its worker 50 ms late
		fa, err := d.Submit(ctx, task{"A", 1})
		require.NoError(t, err)
		synctest.Wait() // A's admission is stalled, its worker reserved
		start := time.Now()
		fb, err := d.Submit(ctx, task{"B", 2})
		require.NoError(t, err)
		_, err = fb.Wait(ctx)
		require.NoError(t, err)
		assert.LessOrEqual(t, time.Since(start), time.Second, "B's time: it waited for A's refund")
		_, err = fa.Wait(ctx)
		require.NoError(t, err)
		assert.EqualValues(t, 1, keyStats(t, d, "A").Late, "A's give-backs: the test did not make it late")
	})
}

// TestShutdownCutsGiveBackShort: once every job is resolved, Shutdown does
// not wait for the backend to finish refunding a late job's admission.
func TestShutdownCutsGiveBackShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newSlowRefundLimiter(t, bucket.PerSecond(1000), time.Hour)
		d, err := dispatcher.New(func(_ context.Context, j task) (int, error) {
			time.Sleep(time.Millisecond)
			return j.n, nil
		}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(1000))
		require.NoError(t, err)
		ctx := context.Background()
		stallOnce(d, 50*time.Millisecond)
		jctx, cancel := context.WithCancel(ctx)
		f, err := d.Submit(jctx, task{"A", 1})
		require.NoError(t, err)
		time.Sleep(time.Second) // A was late; its refund is under way
		synctest.Wait()
		cancel() // A is resolved while its refund still runs
		_, err = f.Wait(ctx)
		require.ErrorIs(t, err, context.Canceled, "A")
		sctx, stop := context.WithTimeout(ctx, 200*time.Millisecond)
		defer stop()
		start := time.Now()
		assert.NoError(t, d.Shutdown(sctx), "Shutdown")
		assert.LessOrEqual(t, time.Since(start), 200*time.Millisecond, "Shutdown's time: it waited for the refund")
		assert.EqualValues(t, 1, keyStats(t, d, "A").Late, "A's give-backs: the test did not make it late")
	})
}

// TestCancelledAdmissionRefunded: a job cancelled while its admission is
// being decided has it refunded before its key asks again, so the key's
// next job does not wait an interval for a slot nobody used.
func TestCancelledAdmissionRefunded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newSlowRefundLimiter(t, bucket.PerSecond(1), 100*time.Millisecond)
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) { return j.n, nil }, taskKey,
			dispatcher.WithWorkers(2), dispatcher.WithLimiter(lim))
		stallOnce(d, 10*time.Millisecond)
		ctx := context.Background()
		start := time.Now()
		actx, cancel := context.WithCancel(ctx)
		_, err := d.Submit(actx, task{"A", 1})
		require.NoError(t, err)
		synctest.Wait() // A's admission is decided, not yet applied
		cancel()
		fb, err := d.Submit(ctx, task{"A", 2})
		require.NoError(t, err)
		// Applied: the refund of A's admission is under way, and another
		// key's job wakes the scheduler meanwhile.
		time.Sleep(20 * time.Millisecond)
		_, err = d.Submit(ctx, task{"other", 3})
		require.NoError(t, err)
		_, err = fb.Wait(ctx)
		require.NoError(t, err)
		assert.LessOrEqual(t, time.Since(start), 500*time.Millisecond,
			"start of A's next job: the cancelled admission was not refunded first")
	})
}

// TestLateGiveBackKeepsOrder: a job that reaches its worker late goes back
// to the head of its key's queue, and the key's later bookings go back with
// it: they do not start before it.
func TestLateGiveBackKeepsOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var order []int
		for _, st := range startsAfterLate(t, bucket.PerSecond(100)) {
			order = append(order, st.n)
		}
		assert.Equal(t, []int{1, 2, 3}, order, "key A's starts, want submission order")
	})
}

// TestLateGiveBackReturnsEverySlot: when a job reaches its worker late, the
// slots of its key's later bookings, which go back with it, are given back
// too (one refund of their joined booking): the key starts again from the
// moment the job comes back, not from after the bookings it gave up.
func TestLateGiveBackReturnsEverySlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		starts := startsAfterLate(t, bucket.PerSecond(100))
		// A1 comes back when B ends, at 8ms; then A2 and A3 one interval
		// apart. Had only the latest booking been given back, A would have
		// started again after A2's slot, at 20ms.
		require.Len(t, starts, 3)
		assert.LessOrEqual(t, starts[2].at, 8*time.Millisecond+2*10*time.Millisecond,
			"key A's last start, want by 28ms: its given-up slots were lost")
	})
}

// TestLateGiveBackReturnsQuota: under a quota, the given-up bookings'
// quota units come back too: a key with a quota of 3 an hour whose first
// job is late still runs its 3 jobs now, not an hour later.
func TestLateGiveBackReturnsQuota(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		starts := startsAfterLate(t, bucket.PerSecond(100).WithQuota(3, time.Hour))
		require.Len(t, starts, 3)
		assert.LessOrEqual(t, starts[2].at, time.Second,
			"key A's last start, want all 3 within a second: the given-up quota units were lost")
	})
}

// startsAfterLate runs, on one worker, a job of key B that holds it for
// 8ms, then three jobs of key A under lim, booked meanwhile: the first
// reaches the worker late. It returns which of A's jobs started when, in
// the order they started. Run it in a synctest bubble.
func startsAfterLate(t *testing.T, lim bucket.Limit) []jobStart {
	var mu sync.Mutex
	var starts []jobStart
	begin := time.Now()
	d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
		if j.key == "B" {
			time.Sleep(8 * time.Millisecond) // occupies the only worker
			return 0, nil
		}
		mu.Lock()
		starts = append(starts, jobStart{j.n, time.Since(begin)})
		mu.Unlock()
		return 0, nil
	}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithBookAhead(30*time.Millisecond),
		dispatcher.WithLimiter(newLimiter(t, lim)), dispatcher.WithKeyStats(1000))
	ctx := context.Background()
	var fs []*dispatcher.Future[int]
	for _, tk := range []task{{"B", 0}, {"A", 1}, {"A", 2}, {"A", 3}} {
		f, err := d.Submit(ctx, tk)
		require.NoError(t, err)
		fs = append(fs, f)
	}
	for _, f := range fs {
		_, err := f.Wait(ctx)
		require.NoError(t, err)
	}
	require.Positive(t, keyStats(t, d, "A").Late, "late jobs of A: the test did not make one late")
	return starts
}

// A jobStart is when a job started, since the test began.
type jobStart struct {
	n  int
	at time.Duration
}

// TestRetryAfterHoldsHandedJob: A2 was handed to the only worker (it waits
// in the run queue) while A1 ran; A1 answers retry-after 100ms: A2 does not
// start inside the pause, nor before A1's retry.
func TestRetryAfterHoldsHandedJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		type st struct {
			n  int
			at time.Duration
		}
		var starts []st
		begin := time.Now()
		var once sync.Once
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			mu.Lock()
			starts = append(starts, st{j.n, time.Since(begin)})
			mu.Unlock()
			var err error
			if j.n == 1 {
				once.Do(func() {
					time.Sleep(500 * time.Microsecond)
					err = &retryAfterError{delay: 100 * time.Millisecond, err: errors.New("429")}
				})
			}
			return 0, err
		}, taskKey, dispatcher.WithWorkers(1),
			dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100).WithBurst(2))))
		ctx := context.Background()
		f1, _ := d.Submit(ctx, task{"A", 1})
		f2, _ := d.Submit(ctx, task{"A", 2})
		f1.Wait(ctx)
		f2.Wait(ctx)
		require.Len(t, starts, 3)
		assert.Equal(t, 1, starts[1].n, "job run second, at %v: A2 started inside A1's 100ms retry-after pause and before A1's retry", starts[1].at)
	})
}

// TestRetryAfterRefundOffWorker: the refund a retry-after makes (of the
// key's latest booking) does not run on the worker: with a slow backend,
// another key's job handed to that worker does not wait for it.
func TestRetryAfterRefundOffWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newSlowRefundLimiter(t, bucket.PerSecond(100), 5*time.Second)
		var once sync.Once
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			var err error
			if j.key == "A" && j.n == 1 {
				once.Do(func() {
					time.Sleep(time.Millisecond)
					err = &retryAfterError{delay: 100 * time.Millisecond}
				})
			}
			return 0, err
		}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithBookAhead(20*time.Millisecond),
			dispatcher.WithLimiter(lim))
		ctx := context.Background()
		fa1, _ := d.Submit(ctx, task{"A", 1})
		fa2, _ := d.Submit(ctx, task{"A", 2}) // booked at 10ms when A1 answers
		time.Sleep(2 * time.Millisecond)
		start := time.Now()
		_, err := d.Do(ctx, task{"B", 3})
		require.NoError(t, err)
		assert.LessOrEqual(t, time.Since(start), 100*time.Millisecond, "B's time: its worker was refunding A's booking")
		fa1.Wait(ctx)
		fa2.Wait(ctx)
	})
}

// TestKeyStatsBounded: WithKeyStats(max) keeps figures for max keys at a
// time; a key that arrives while they are all taken has none, and new
// keys have figures again once the first ones are forgotten.
func TestKeyStatsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) { return j.n, nil }, taskKey,
			dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000))), dispatcher.WithKeyStats(10))
		ctx := context.Background()
		for i := range 20 {
			_, err := d.Do(ctx, task{fmt.Sprint("early-", i), i})
			require.NoError(t, err)
		}
		synctest.Wait() // a worker counts a job's outcome after its future resolves
		for i := range 20 {
			k, ok := d.KeyStats(fmt.Sprint("early-", i))
			if i < 10 {
				require.True(t, ok, "KeyStats(early-%d): one of the first 10 keys", i)
				assert.EqualValues(t, 1, k.Succeeded, "KeyStats(early-%d).Succeeded", i)
			} else {
				assert.False(t, ok, "KeyStats(early-%d): beyond the 10 keys with figures", i)
			}
		}
		assert.Equal(t, 10, dispatcher.KeyCount(d), "keys known: those with figures")
		time.Sleep(2 * time.Minute)
		// early-0 again: the scheduler wakes and forgets the other early
		// keys, idle for two minutes, which leaves room for 9 keys.
		_, err := d.Do(ctx, task{"early-0", 0})
		require.NoError(t, err)
		for i := range 10 {
			_, err := d.Do(ctx, task{fmt.Sprint("late-", i), i})
			require.NoError(t, err)
			_, ok := d.KeyStats(fmt.Sprint("late-", i))
			assert.Equal(t, i < 9, ok, "KeyStats(late-%d) has figures", i)
		}
		synctest.Wait()
		k := keyStats(t, d, "early-0")
		assert.EqualValues(t, 2, k.Succeeded, "KeyStats(early-0).Succeeded, kept while in use")
	})
}

// TestRetryAfterOrderAfterDrop: a key dropped while its jobs run (none
// waits) and used again keeps its jobs in submission order: A2, answered
// retry-after while A3 and A4, submitted after the drop, wait for a
// worker, runs again before them.
func TestRetryAfterOrderAfterDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release1, release2 := make(chan struct{}), make(chan struct{})
		var mu sync.Mutex
		var order []string
		var once atomic.Bool
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			mu.Lock()
			order = append(order, fmt.Sprint("A", j.n))
			mu.Unlock()
			switch {
			case j.n == 1:
				<-release1
			case j.n == 2 && once.CompareAndSwap(false, true):
				<-release2
				return 0, &retryAfterError{delay: 100 * time.Millisecond}
			}
			return j.n, nil
		}, taskKey, dispatcher.WithWorkers(2), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000).WithBurst(100))))
		ctx := context.Background()
		var fs []*dispatcher.Future[int]
		submit := func(n int) {
			f, err := d.Submit(ctx, task{"A", n})
			require.NoError(t, err)
			fs = append(fs, f)
		}
		submit(1)
		submit(2)
		synctest.Wait()
		require.Zero(t, dispatcher.KeyCount(d), "keys held while A1 and A2 run and none waits")
		submit(3)
		submit(4)
		synctest.Wait() // admitted, waiting for a worker
		close(release2)
		synctest.Wait() // A2 is back at the head of A's queue, for the pause
		// A1 holds its worker until the others are done: one worker
		// starts A2, A3 and A4 in the order they are handed to it (with
		// two, A3 could start on one while A2 starts on the other).
		for _, f := range fs[1:] {
			_, err := f.Wait(ctx)
			require.NoError(t, err)
		}
		close(release1)
		_, err := fs[0].Wait(ctx)
		require.NoError(t, err)
		require.Len(t, order, 5, "starts of A's jobs")
		assert.ElementsMatch(t, []string{"A1", "A2"}, order[:2], "first starts of A's jobs: %v", order)
		assert.Equal(t, []string{"A2", "A3", "A4"}, order[2:], "A's starts after the retry-after: %v", order)
	})
}

// TestKeyStatsWhileKeysReused: KeyStats looks a key up while the
// scheduler drops keys whose jobs have all started and reuses their
// states for other keys. Reading a state once the scheduler's lock is let
// go races (under -race) with its reuse, and could report another key's
// figures.
func TestKeyStatsWhileKeysReused(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, j task) (int, error) { return j.n, nil }, taskKey,
		dispatcher.WithWorkers(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000).WithBurst(1_000_000))))
	ctx := context.Background()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			_, _ = d.KeyStats("a")
			for range 100 {
				runtime.Gosched() // out of the lock a while, as a caller between reads
			}
		}
	})
	for i := range 2000 {
		_, err := d.Do(ctx, task{"a", i})
		require.NoError(t, err)
		_, err = d.Do(ctx, task{"b", i})
		require.NoError(t, err)
	}
	stop.Store(true)
	wg.Wait()
}
