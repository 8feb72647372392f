package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/middleware"
)

type job struct {
	key string
	n   int
}

// newLimiter returns a Limiter over a fresh memstore, closed at cleanup.
func newLimiter(t *testing.T, lim bucket.Limit) *bucket.Limiter {
	t.Helper()
	store, err := memstore.New(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	l, err := bucket.NewLimiter(store, lim)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRateLimitAdmitsThroughTheBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(2))
		rl, err := middleware.RateLimit[job, time.Duration](lim, func(j job) string { return j.key })
		if err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		h := rl(func(ctx context.Context, j job) (time.Duration, error) { return time.Since(begin), nil })
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
			if err != nil || got != tt.want {
				t.Errorf("job %v started at %v, %v, want %v", tt.job, got, err, tt.want)
			}
		}
	})
}

func TestRateLimitConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerSecond(10).WithBurst(2))
		rl, _ := middleware.RateLimit[job, struct{}](lim, func(j job) string { return j.key })
		begin := time.Now()
		starts := make(chan time.Duration, 20)
		h := rl(func(ctx context.Context, j job) (struct{}, error) {
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
		for i := range got {
			n := 0
			for j := range got {
				if got[j] >= got[i] && got[j] < got[i]+time.Second {
					n++
				}
			}
			if n > 2+10 {
				t.Fatalf("%d starts in [%v, %v+1s), want at most 12", n, got[i], got[i])
			}
		}
		if last := time.Since(begin); last != time.Second {
			t.Errorf("12 jobs at 10/s burst 2 done after %v, want 1s", last)
		}
	})
}

func TestRateLimitCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lim := newLimiter(t, bucket.PerMinute(1))
		rl, _ := middleware.RateLimit[job, int](lim, func(j job) string { return j.key })
		calls := 0
		h := rl(func(ctx context.Context, j job) (int, error) { calls++; return j.n, nil })
		if _, err := h(context.Background(), job{"k", 1}); err != nil {
			t.Fatal(err)
		}

		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		start := time.Now()
		_, err := h(ctx, job{"k", 2})
		if !errors.Is(err, context.Canceled) || time.Since(start) != time.Second {
			t.Errorf("cancelled wait returned %v after %v, want context.Canceled after 1s", err, time.Since(start))
		}

		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = h(ctx, job{"k", 3})
		var we *bucket.WaitError
		if !errors.As(err, &we) || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != time.Second {
			t.Errorf("wait beyond the deadline returned %v after %v, want a *bucket.WaitError at once", err, time.Since(start)-time.Second)
		}
		if calls != 1 {
			t.Errorf("handler called %d times, want 1", calls)
		}
		// The cancelled booking was given back: the next unit is due a
		// minute after the first, not two.
		if _, err := h(context.Background(), job{"k", 4}); err != nil || time.Since(start) != time.Minute {
			t.Errorf("next admission at %v, %v, want 1m0s", time.Since(start), err)
		}
	})
}

func TestRateLimitErrors(t *testing.T) {
	lim := newLimiter(t, bucket.PerSecond(1))
	key := func(j job) string { return j.key }
	if _, err := middleware.RateLimit[job, int](nil, key); err == nil {
		t.Errorf("RateLimit(nil, key) error = nil, want an error")
	}
	if _, err := middleware.RateLimit[job, int](lim, nil); err == nil {
		t.Errorf("RateLimit(lim, nil) error = nil, want an error")
	}
	rl, _ := middleware.RateLimit[job, int](lim, key)
	called := false
	_, err := rl(func(ctx context.Context, j job) (int, error) { called = true; return 0, nil })(context.Background(), job{"", 1})
	if !errors.Is(err, bucket.ErrEmptyKey) || called {
		t.Errorf("empty key: error %v, handler called %v; want ErrEmptyKey, not called", err, called)
	}
	if want := fmt.Sprintf("middleware: rate limit of key %q: %v", "", bucket.ErrEmptyKey); err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}
