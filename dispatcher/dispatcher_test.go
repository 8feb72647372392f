package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func double(_ context.Context, n int) (int, error) { return 2 * n, nil }

func newDispatcher[T, R any](t *testing.T, h dispatcher.Handler[T, R], key func(T) string, opts ...dispatcher.Option) *dispatcher.Dispatcher[T, R] {
	t.Helper()
	d, err := dispatcher.New(h, key, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// newLimiter returns a limiter over a fresh memstore, closed at cleanup.
func newLimiter(t *testing.T, lim bucket.Limit, opts ...bucket.Option) *bucket.Limiter {
	t.Helper()
	s, err := memstore.New(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	l, err := bucket.NewLimiter(s, lim, opts...)
	if err != nil {
		t.Fatal(err)
	}
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
				if err != nil || got != 2*i {
					t.Fatalf("Do(%d) = %d, %v, want %d, nil", i, got, err, 2*i)
				}
			}
			if err := d.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			st := d.Stats()
			if st.Submitted != 1000 || st.Succeeded != 1000 || st.Queued != 0 || st.Running != 0 {
				t.Errorf("Stats = %+v, want 1000 submitted and succeeded", st)
			}
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
			if r.Err == nil {
				t.Errorf("DoAll result %d: err nil, want an error", i)
			}
		} else if r.Err != nil || r.Value != i*i {
			t.Errorf("DoAll result %d = %d, %v, want %d", i, r.Value, r.Err, i*i)
		}
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
		if o.Err != nil || o.Value != 2*o.Job {
			t.Errorf("outcome for %d = %d, %v", o.Job, o.Value, o.Err)
		}
		if seen[o.Job] {
			t.Errorf("job %d delivered twice", o.Job)
		}
		seen[o.Job] = true
	}
	if len(seen) != 1000 {
		t.Errorf("Stream delivered %d outcomes, want 1000", len(seen))
	}
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
		if n := pulled.Load(); n > 2+3+1 {
			t.Errorf("with nobody reading, Stream pulled %d jobs, want at most queue+workers+1", n)
		}
		n := 0
		for range out {
			n++
		}
		if n != 100 {
			t.Errorf("got %d outcomes, want 100", n)
		}
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
	if !errors.As(err, &pe) || pe.Value != "boom" || len(pe.Stack) == 0 {
		t.Fatalf("Do(panicking job) error = %v, want a *PanicError with the value and a stack", err)
	}
	if got, err := d.Do(context.Background(), 2); got != 2 || err != nil {
		t.Fatalf("after a panic, Do(2) = %d, %v: the worker died", got, err)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := dispatcher.New[int, int](nil, nil); err == nil {
		t.Error("New(nil handler) succeeded")
	}
	if _, err := dispatcher.NewWithCost(double, nil, nil); err == nil {
		t.Error("NewWithCost(nil cost) succeeded")
	}
	for name, opt := range map[string]dispatcher.Option{
		"workers 0":     dispatcher.WithWorkers(0),
		"queue -1":      dispatcher.WithQueue(-1),
		"nil limiter":   dispatcher.WithLimiter(nil),
		"requeues -1":   dispatcher.WithMaxRequeues(-1),
		"book ahead -1": dispatcher.WithBookAhead(-time.Second),
		"batch 0":       dispatcher.WithBatchSize(0),
	} {
		if d, err := dispatcher.New(double, nil, opt); err == nil {
			d.Close()
			t.Errorf("New with %s succeeded, want an error", name)
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
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Submit(context.Background(), 0); !errors.Is(err, bucket.ErrEmptyKey) {
		t.Errorf("Submit with an empty key: %v, want bucket.ErrEmptyKey", err)
	}
	if _, err := d.Submit(context.Background(), -1); !errors.Is(err, bucket.ErrInvalidCost) {
		t.Errorf("Submit with cost -1: %v, want bucket.ErrInvalidCost", err)
	}
	if _, err := d.Do(context.Background(), 3); !errors.Is(err, bucket.ErrImpossible) {
		t.Errorf("Do with cost 3 above burst 2: %v, want bucket.ErrImpossible", err)
	}
	if got, err := d.Do(context.Background(), 2); err != nil || got != 4 {
		t.Errorf("Do(2) = %d, %v after bad jobs, want 4", got, err)
	}
	if st := d.Stats(); st.Failed != 1 || st.Succeeded != 1 || st.Submitted != 2 {
		t.Errorf("Stats = %+v, want 2 submitted, 1 failed, 1 succeeded", st)
	}
	d.Shutdown(context.Background())
	if _, err := d.Submit(context.Background(), 1); !errors.Is(err, dispatcher.ErrClosed) {
		t.Errorf("Submit after Shutdown: %v, want ErrClosed", err)
	}
	if _, err := d.TrySubmit(context.Background(), 1); !errors.Is(err, dispatcher.ErrClosed) {
		t.Errorf("TrySubmit after Shutdown: %v, want ErrClosed", err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
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
	if got := len(s.at[key]); got != want {
		t.Errorf("key %s: %d starts, want %d", key, got, want)
	}
	if err := backendtest.Check(lim, s.at[key]); err != nil {
		t.Errorf("key %s: %v", key, err)
	}
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
			if v, err := d.Do(ctx, 1); err != nil || v != 42 {
				t.Fatalf("Do = %d, %v; want the ctx value 42", v, err)
			}
			hctx := <-got
			select {
			case <-hctx.Done():
			default:
				t.Error("the handler's context is not done after the handler returned")
			}
			if !errors.Is(hctx.Err(), context.Canceled) {
				t.Errorf("handler's context Err = %v after the run, want context.Canceled", hctx.Err())
			}
		})
	}
}

// TestStatsAdmissionWait: with one key at 10/s and burst 1, the n-th job
// waits n×100ms from Submit to start; the percentiles say so.
func TestStatsAdmissionWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, double, nil, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(10))), dispatcher.WithWorkers(1))
		var fs []*dispatcher.Future[int]
		for i := range 100 {
			f, err := d.Submit(context.Background(), i)
			if err != nil {
				t.Fatal(err)
			}
			fs = append(fs, f)
		}
		synctest.Wait()
		if st := d.Stats(); st.Waiting == 0 || st.Queued == 0 {
			t.Errorf("with 99 jobs held back by their bucket, Stats = %+v, want Queued and Waiting above 0", st)
		}
		for _, f := range fs {
			f.Wait(context.Background())
		}
		st := d.Stats()
		w := st.AdmissionWait
		// Exact waits are 0, 100ms, …, 9.9s; buckets are at most 12.5% wide.
		check := func(name string, got, want time.Duration) {
			if got < want || got > want+want/8+time.Millisecond {
				t.Errorf("AdmissionWait.%s = %v, want %v (+12.5%%)", name, got, want)
			}
		}
		check("P50", w.P50, 4900*time.Millisecond)
		check("P90", w.P90, 8900*time.Millisecond)
		if w.Count != 100 || w.Max != 9900*time.Millisecond {
			t.Errorf("AdmissionWait = %+v, want 100 waits, the longest 9.9s", w)
		}
		if k := st.Keys["default"]; k.Throttled == 0 || k.AdmissionWait.Count != 100 {
			t.Errorf("Stats.Keys[default] = %+v, want throttled admissions and 100 waits", k)
		}
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
