package middleware_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/middleware"
)

type job struct {
	key string
	n   int
}

func (j job) Key() string { return j.key }

// newLimiter returns a Limiter over a fresh memstore, closed at cleanup.
func newLimiter(t *testing.T, lim bucket.Limit) *bucket.Limiter {
	t.Helper()
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	l, err := bucket.NewLimiter(store, lim)
	require.NoError(t, err)
	return l
}

// rateLimited returns h waiting for its job's key in lim: RateLimit, keyed
// by job.Key.
func rateLimited[R any](lim *bucket.Limiter, h middleware.Handler[job, R]) middleware.Handler[job, R] {
	return middleware.Keyed(middleware.Wrap(h, middleware.RateLimit(lim)), job.Key)
}

func TestRateLimitAdmitsThroughTheBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(2))
		begin := time.Now()
		h := rateLimited(lim, func(ctx context.Context, j job) (time.Duration, error) { return time.Since(begin), nil })
		tests := []struct {
			job  job
			want time.Duration
		}{
			{job{"a", 1}, 0},
			{job{"a", 2}, 500 * time.Millisecond},
			{job{"b", 1}, 500 * time.Millisecond}, // its own bucket: no wait beyond the clock
			{job{"a", 3}, time.Second},
			{job{"b", 2}, time.Second},
		}
		for _, tt := range tests {
			got, err := h(context.Background(), tt.job)
			require.NoError(t, err, "job %v", tt.job)
			assert.Equal(t, tt.want, got, "job %v started at", tt.job)
		}
	})
}

func TestRateLimitConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(10).WithBurst(2))
		begin := time.Now()
		starts := make(chan time.Duration, 20)
		h := rateLimited(lim, func(ctx context.Context, j job) (struct{}, error) {
			starts <- time.Since(begin)
			return struct{}{}, nil
		})
		done := make(chan struct{})
		for i := range 12 {
			go func() {
				h(context.Background(), job{"k", i})
				done <- struct{}{}
			}()
		}
		for range 12 {
			<-done
		}
		close(starts)
		// Rate guarantee: in any interval of length d, at most B + d/T start.
		var got []time.Duration
		for s := range starts {
			got = append(got, s)
		}
		require.Len(t, got, 12)
		for i := range got {
			n := 0
			for j := range got {
				if got[j] >= got[i] && got[j] < got[i]+time.Second {
					n++
				}
			}
			require.LessOrEqual(t, n, 2+10, "starts in [%v, %v+1s)", got[i], got[i])
		}
		assert.Equal(t, time.Second, time.Since(begin), "12 jobs at 10/s burst 2 done after")
	})
}

func TestRateLimitCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerMinute(1))
		calls := 0
		h := rateLimited(lim, func(ctx context.Context, j job) (int, error) { calls++; return j.n, nil })
		_, err := h(context.Background(), job{"k", 1})
		require.NoError(t, err)

		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		start := time.Now()
		_, err = h(ctx, job{"k", 2})
		assert.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, time.Second, time.Since(start), "the cancelled wait returned after")

		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = h(ctx, job{"k", 3})
		var we *bucket.WaitError
		assert.ErrorAs(t, err, &we)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start), "a wait beyond the deadline must fail at once")
		assert.Equal(t, 1, calls, "handler calls")
		// The cancelled booking was given back: the next unit is due a
		// minute after the first, not two.
		_, err = h(context.Background(), job{"k", 4})
		require.NoError(t, err)
		assert.Equal(t, time.Minute, time.Since(start), "the next admission came at")
	})
}

func TestRateLimitErrors(t *testing.T) {
	assert.PanicsWithValue(t, "middleware: RateLimit: nil limiter", func() { middleware.RateLimit(nil) })

	lim := newLimiter(t, bucket.PerSecond(1))
	called := false
	h := func(ctx context.Context, j job) (int, error) { called = true; return 0, nil }
	tests := []struct {
		name string
		h    middleware.Handler[job, int]
		msg  string
	}{
		{"without a key", middleware.Wrap(h, middleware.RateLimit(lim)),
			"middleware: RateLimit: the call's context carries no key (use Keyed): bucket: empty key"},
		{"with an empty key", rateLimited(lim, h),
			"middleware: RateLimit: the call's key is empty: bucket: empty key"},
	}
	for _, tt := range tests {
		called = false
		_, err := tt.h(context.Background(), job{"", 1})
		assert.ErrorIs(t, err, bucket.ErrEmptyKey, tt.name)
		assert.EqualError(t, err, tt.msg, tt.name)
		assert.False(t, called, "%s: handler called", tt.name)
	}
}
