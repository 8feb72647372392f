package dispatcher_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/jobinfo"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func double(_ context.Context, n int) (int, error) { return 2 * n, nil }

func newDispatcher[T, R any](t *testing.T, h dispatcher.Handler[T, R], key func(T) string, opts ...dispatcher.Option) *dispatcher.Dispatcher[T, R] {
	t.Helper()
	d, err := dispatcher.New(h, key, opts...)
	require.NoError(t, err, "New")
	t.Cleanup(func() { d.Close() })
	return d
}

// newLimiter returns a limiter over a fresh memstore, closed at cleanup.
func newLimiter(t *testing.T, lim bucket.Limit, opts ...bucket.Option) *bucket.Limiter {
	t.Helper()
	s, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	l, err := bucket.NewLimiter(s, lim, opts...)
	require.NoError(t, err)
	return l
}

func TestDo(t *testing.T) {
	for _, withLimiter := range []bool{false, true} {
		t.Run(fmt.Sprint("limiter=", withLimiter), func(t *testing.T) {
			opts := []dispatcher.Option{dispatcher.WithWorkers(4)}
			if withLimiter {
				opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000).WithBurst(1000))))
			}
			d := newDispatcher(t, double, func(n int) string { return fmt.Sprint("k", n%7) }, opts...)
			for i := range 1000 {
				got, err := d.Do(context.Background(), i)
				require.NoError(t, err, "Do(%d)", i)
				require.Equal(t, 2*i, got, "Do(%d)", i)
			}
			require.NoError(t, d.Shutdown(context.Background()), "Shutdown")
			st := d.Stats()
			assert.EqualValues(t, 1000, st.Submitted, "Stats.Submitted")
			assert.EqualValues(t, 1000, st.Succeeded, "Stats.Succeeded")
			assert.Zero(t, st.Queued, "Stats.Queued")
			assert.Zero(t, st.Running, "Stats.Running")
		})
	}
}

func TestDoAllKeepsInputOrder(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, n int) (int, error) {
		if n%10 == 3 {
			return 0, fmt.Errorf("job %d failed", n)
		}
		return n * n, nil
	}, nil, dispatcher.WithWorkers(8), dispatcher.WithQueue(16))
	jobs := make([]int, 500)
	for i := range jobs {
		jobs[i] = i
	}
	for i, r := range d.DoAll(context.Background(), jobs) {
		if i%10 == 3 {
			assert.Error(t, r.Err, "DoAll result %d", i)
			continue
		}
		assert.NoError(t, r.Err, "DoAll result %d", i)
		assert.Equal(t, i*i, r.Value, "DoAll result %d", i)
	}
}

func TestStream(t *testing.T) {
	d := newDispatcher(t, double, nil, dispatcher.WithWorkers(3), dispatcher.WithQueue(4))
	in := make(chan int)
	go func() {
		defer close(in)
		for i := range 1000 {
			in <- i
		}
	}()
	seen := make(map[int]bool)
	for o := range d.Stream(context.Background(), in) {
		assert.NoError(t, o.Err, "outcome for %d", o.Job)
		assert.Equal(t, 2*o.Job, o.Value, "outcome for %d", o.Job)
		assert.False(t, seen[o.Job], "job %d delivered twice", o.Job)
		seen[o.Job] = true
	}
	assert.Len(t, seen, 1000, "outcomes Stream delivered")
}

func TestStreamBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, double, nil, dispatcher.WithWorkers(2), dispatcher.WithQueue(3))
		in := make(chan int)
		var pulled atomic.Int64
		go func() {
			defer close(in)
			for i := range 100 {
				in <- i
				pulled.Add(1)
			}
		}()
		out := d.Stream(context.Background(), in)
		synctest.Wait() // nobody reads out: the pipeline fills and stops pulling
		assert.LessOrEqual(t, pulled.Load(), int64(2+3+1), "jobs Stream pulled with nobody reading, want at most queue+workers+1")
		n := 0
		for range out {
			n++
		}
		assert.Equal(t, 100, n, "outcomes")
	})
}

func TestPanicBecomesError(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, n int) (int, error) {
		if n == 1 {
			panic("boom")
		}
		return n, nil
	}, nil, dispatcher.WithWorkers(1))
	_, err := d.Do(context.Background(), 1)
	var pe *dispatcher.PanicError
	require.ErrorAs(t, err, &pe, "Do(panicking job)")
	assert.Equal(t, "boom", pe.Value)
	assert.NotEmpty(t, pe.Stack)
	got, err := d.Do(context.Background(), 2)
	require.NoError(t, err, "after a panic, Do(2): the worker died")
	assert.Equal(t, 2, got, "after a panic, Do(2)")
}

func TestBadInput(t *testing.T) {
	_, err := dispatcher.New[int, int](nil, nil)
	assert.Error(t, err, "New(nil handler)")
	_, err = dispatcher.NewWithCost(double, nil, nil)
	assert.Error(t, err, "NewWithCost(nil cost)")
	for name, opt := range map[string]dispatcher.Option{
		"workers 0":     dispatcher.WithWorkers(0),
		"queue -1":      dispatcher.WithQueue(-1),
		"nil limiter":   dispatcher.WithLimiter(nil),
		"nil option":    nil,
		"requeues -1":   dispatcher.WithMaxRequeues(-1),
		"book ahead -1": dispatcher.WithBookAhead(-time.Second),
		"batch 0":       dispatcher.WithBatchSize(0),
	} {
		if d, err := dispatcher.New(double, nil, opt); !assert.Error(t, err, "New with %s", name) {
			d.Close()
		}
	}

	d, err := dispatcher.NewWithCost(double,
		func(n int) string {
			if n == 0 {
				return ""
			}
			return "k"
		},
		func(n int) int { return n },
		dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(10).WithBurst(2))))
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Submit(context.Background(), 0)
	assert.ErrorIs(t, err, bucket.ErrEmptyKey, "Submit with an empty key")
	_, err = d.Submit(context.Background(), -1)
	assert.ErrorIs(t, err, bucket.ErrInvalidCost, "Submit with cost -1")
	_, err = d.Do(context.Background(), 3)
	assert.ErrorIs(t, err, bucket.ErrImpossible, "Do with cost 3 above burst 2")
	got, err := d.Do(context.Background(), 2)
	if assert.NoError(t, err, "Do(2) after bad jobs") {
		assert.Equal(t, 4, got, "Do(2) after bad jobs")
	}
	st := d.Stats()
	assert.EqualValues(t, 2, st.Submitted, "Stats.Submitted")
	assert.EqualValues(t, 1, st.Failed, "Stats.Failed")
	assert.EqualValues(t, 1, st.Succeeded, "Stats.Succeeded")
	d.Shutdown(context.Background())
	_, err = d.Submit(context.Background(), 1)
	assert.ErrorIs(t, err, dispatcher.ErrClosed, "Submit after Shutdown")
	_, err = d.TrySubmit(context.Background(), 1)
	assert.ErrorIs(t, err, dispatcher.ErrClosed, "TrySubmit after Shutdown")
	assert.NoError(t, d.Shutdown(context.Background()), "second Shutdown")
}

// starts records handler start times per key on the dispatcher's clock.
type starts struct {
	mu sync.Mutex
	at map[string][]backendtest.Start
	t0 time.Time
}

func newStarts() *starts { return &starts{at: make(map[string][]backendtest.Start), t0: time.Now()} }

func (s *starts) record(key string) {
	s.mu.Lock()
	s.at[key] = append(s.at[key], backendtest.Start{At: int64(time.Since(s.t0)), Cost: 1})
	s.mu.Unlock()
}

func (s *starts) check(t *testing.T, key string, lim bucket.Limit, want int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Len(t, s.at[key], want, "starts of key %s", key)
	assert.NoError(t, backendtest.Check(lim, s.at[key]), "starts of key %s", key)
}

type ctxKey struct{}

// TestJobContext: the Submit context's values reach the handler, and the
// handler's context ends when the handler returns.
func TestJobContext(t *testing.T) {
	for _, withLimiter := range []bool{false, true} {
		t.Run(fmt.Sprint("limiter=", withLimiter), func(t *testing.T) {
			var opts []dispatcher.Option
			if withLimiter {
				opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000))))
			}
			got := make(chan context.Context, 1)
			d := newDispatcher(t, func(ctx context.Context, n int) (int, error) {
				if ctx.Err() != nil {
					return 0, fmt.Errorf("handler's context ended before the handler: %w", ctx.Err())
				}
				got <- ctx
				v, _ := ctx.Value(ctxKey{}).(int)
				return v, nil
			}, nil, opts...)
			ctx := context.WithValue(context.Background(), ctxKey{}, 42)
			v, err := d.Do(ctx, 1)
			require.NoError(t, err)
			require.Equal(t, 42, v, "Do, want the ctx value")
			hctx := <-got
			select {
			case <-hctx.Done():
			default:
				assert.Fail(t, "the handler's context is not done after the handler returned")
			}
			assert.ErrorIs(t, hctx.Err(), context.Canceled, "handler's context after the run")
		})
	}
}

// TestStatsAdmissionWait: with one key at 10/s and burst 1, the n-th job
// waits n×100ms from Submit to start; the percentiles say so.
func TestStatsAdmissionWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, double, nil, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(10))), dispatcher.WithWorkers(1), dispatcher.WithKeyStats(1000))
		var fs []*dispatcher.Future[int]
		for i := range 100 {
			f, err := d.Submit(context.Background(), i)
			require.NoError(t, err)
			fs = append(fs, f)
		}
		synctest.Wait()
		st := d.Stats()
		assert.Positive(t, st.Queued, "Stats.Queued with 99 jobs held back by their bucket")
		assert.Positive(t, st.Waiting, "Stats.Waiting with 99 jobs held back by their bucket")
		assert.Equal(t, dispatcher.RecountWaiting(d), st.Waiting, "Stats.Waiting against a count over every key")
		for _, f := range fs {
			f.Wait(context.Background())
		}
		st = d.Stats()
		w := st.AdmissionWait
		// Exact waits are 0, 100ms, …, 9.9s; buckets are at most 12.5% wide.
		check := func(name string, got, want time.Duration) {
			assert.GreaterOrEqual(t, got, want, "AdmissionWait.%s", name)
			assert.LessOrEqual(t, got, want+want/8+time.Millisecond, "AdmissionWait.%s, want %v +12.5%%", name, want)
		}
		check("P50", w.P50, 4900*time.Millisecond)
		check("P90", w.P90, 8900*time.Millisecond)
		assert.EqualValues(t, 100, w.Count, "AdmissionWait.Count")
		assert.Equal(t, 9900*time.Millisecond, w.Max, "AdmissionWait.Max")
		k := keyStats(t, d, "default")
		assert.Positive(t, k.Throttled, "KeyStats(default).Throttled")
		assert.EqualValues(t, 100, k.AdmissionWait.Count, "KeyStats(default).AdmissionWait.Count")
	})
}

// retryAfterError asks the dispatcher for a pause, as any error with a
// RetryAfter method may.
type retryAfterError struct {
	delay time.Duration
	err   error
}

func (e *retryAfterError) Error() string             { return fmt.Sprintf("%v (retry after %v)", e.err, e.delay) }
func (e *retryAfterError) Unwrap() error             { return e.err }
func (e *retryAfterError) RetryAfter() time.Duration { return e.delay }

// keyStats returns d's figures of key, which it must keep.
func keyStats[T, R any](t *testing.T, d *dispatcher.Dispatcher[T, R], key string) dispatcher.KeyStats {
	t.Helper()
	k, ok := d.KeyStats(key)
	require.True(t, ok, "KeyStats(%q)", key)
	return k
}

// TestHandlerContextDeadline: a handler's context ends with its Submit
// context's error when that context's deadline passes during the run, a
// context derived from it ends with it, and the first end stays: the run's
// own end does not turn DeadlineExceeded into Canceled.
func TestHandlerContextDeadline(t *testing.T) {
	for _, limited := range []bool{false, true} {
		t.Run(fmt.Sprintf("limiter=%v", limited), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var hctx, derived context.Context
				var opts []dispatcher.Option
				if limited {
					opts = append(opts, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(10))))
				}
				d := newDispatcher(t, func(ctx context.Context, n int) (int, error) {
					hctx = ctx
					var cancel context.CancelFunc
					derived, cancel = context.WithCancel(ctx)
					defer cancel()
					<-derived.Done()
					return 0, ctx.Err()
				}, nil, opts...)
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				f, err := d.Submit(ctx, 1)
				require.NoError(t, err)
				_, err = f.Wait(context.Background()) // the job's outcome, not ctx's end
				require.ErrorIs(t, err, context.DeadlineExceeded, "the handler's error")
				assert.ErrorIs(t, hctx.Err(), context.DeadlineExceeded, "the handler's context after the run")
				assert.ErrorIs(t, derived.Err(), context.DeadlineExceeded, "a context derived in the handler")
				select {
				case <-hctx.Done():
				default:
					assert.Fail(t, "the handler's context is not done after the run")
				}
			})
		})
	}
}

// TestRequeuedContextWatchesParent: a job answered retry-after runs again.
// A goroutine the first run left behind may derive from that run's
// context (context.AfterFunc, WithCancel) as the job goes back to its
// queue: it must not see a context whose Done is closed but whose Err is
// nil, and the second run's context must still end when the Submit
// context does. Until each run after the first had a context of its own,
// the first run's context was reset for the second, and the leftover
// goroutine's context.AfterFunc panicked ("missing cancel error"), taking
// the process down.
func TestRequeuedContextWatchesParent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type started struct{}
		var (
			leftover sync.WaitGroup
			stop     atomic.Bool
			running  = make(chan started)
		)
		d := newDispatcher(t, func(ctx context.Context, j task) (int, error) {
			if info, _ := jobinfo.FromContext(ctx); info.Attempt == 1 {
				stop.Store(false)
				spinning := make(chan struct{})
				leftover.Go(func() {
					context.AfterFunc(ctx, func() {})
					close(spinning)
					for !stop.Load() {
						context.AfterFunc(ctx, func() {})
					}
				})
				<-spinning // on a core of its own as the run ends
				return 0, &retryAfterError{}
			}
			stop.Store(true)
			leftover.Wait()
			done := ctx.Done()
			running <- started{}
			<-done
			return 0, ctx.Err()
		}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000).WithBurst(1_000_000))))
		for i := range 300 {
			ctx, cancel := context.WithCancel(context.Background())
			f, err := d.Submit(ctx, task{"a", i})
			require.NoError(t, err)
			<-running
			cancel()
			_, err = f.Wait(context.Background())
			require.ErrorIs(t, err, context.Canceled, "round %d", i)
		}
	})
}
