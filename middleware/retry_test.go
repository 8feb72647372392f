package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/middleware"
)

// script is a handler that fails with errs[i] on its i-th call (nil: it
// succeeds) and records the JobInfo of each call.
type script struct {
	mu    sync.Mutex
	errs  []error
	infos []middleware.JobInfo
}

func (s *script) handle(ctx context.Context, job int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, _ := middleware.JobInfoFrom(ctx)
	s.infos = append(s.infos, info)
	n := len(s.infos)
	if n > len(s.errs) {
		return n, nil
	}
	return n, s.errs[n-1]
}

func (s *script) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.infos)
}

// sleeps records the waits asked of it and returns at once, or the
// context's cause if it has ended.
type sleeps struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	return context.Cause(ctx)
}

// constRand returns a WithRand option that always draws r.
func constRand(r float64) middleware.RetryOption {
	return middleware.WithRand(func() float64 { return r })
}

// newRetry builds a Retry with a recording sleeper and the given options.
func newRetry(t *testing.T, opts ...middleware.RetryOption) (middleware.Middleware[int, int], *sleeps) {
	t.Helper()
	s := new(sleeps)
	m, err := middleware.Retry[int, int](append([]middleware.RetryOption{middleware.WithSleep(s.sleep)}, opts...)...)
	if err != nil {
		t.Fatalf("Retry(...) error %v", err)
	}
	return m, s
}

var errBoom = errors.New("boom")

func TestRetryAttempts(t *testing.T) {
	tests := []struct {
		name      string
		errs      []error
		attempts  int
		wantCalls int
		wantErr   bool
		wantWaits []time.Duration
	}{
		{"success", nil, 3, 1, false, nil},
		{"one failure", []error{errBoom}, 3, 2, false, []time.Duration{100 * time.Millisecond}},
		{"exhausted", []error{errBoom, errBoom, errBoom, errBoom}, 3, 3, true, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}},
		{"single attempt", []error{errBoom}, 1, 1, true, nil},
		{"capped", []error{errBoom, errBoom, errBoom, errBoom, errBoom, errBoom}, 7, 7, false,
			[]time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, s := newRetry(t, middleware.WithMaxAttempts(tt.attempts), middleware.WithJitter(0),
				middleware.WithBackoff(100*time.Millisecond, time.Second))
			sc := &script{errs: tt.errs}
			n, err := m(sc.handle)(context.Background(), 0)
			if sc.calls() != tt.wantCalls || n != tt.wantCalls {
				t.Errorf("handler called %d times, result %d, want %d", sc.calls(), n, tt.wantCalls)
			}
			if (err != nil) != tt.wantErr {
				t.Errorf("error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, errBoom) {
				t.Errorf("errors.Is(%v, errBoom) = false, want true", err)
			}
			if fmt.Sprint(s.waits) != fmt.Sprint(tt.wantWaits) {
				t.Errorf("waits = %v, want %v", s.waits, tt.wantWaits)
			}
		})
	}
}

func TestRetryExhaustedErrorSaysSo(t *testing.T) {
	m, _ := newRetry(t, middleware.WithMaxAttempts(2))
	sc := &script{errs: []error{errBoom, errBoom}}
	_, err := m(sc.handle)(context.Background(), 0)
	if want := "middleware: gave up after 2 attempts: boom"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}

func TestRetryAttemptNumbers(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want []middleware.JobInfo
	}{
		{"no JobInfo", context.Background(), []middleware.JobInfo{{Attempt: 1}, {Attempt: 2}, {Attempt: 3}}},
		{"from a dispatcher", middleware.WithJobInfo(context.Background(), middleware.JobInfo{Key: "k", Attempt: 2}),
			[]middleware.JobInfo{{Key: "k", Attempt: 2}, {Key: "k", Attempt: 3}, {Key: "k", Attempt: 4}}},
	}
	for _, tt := range tests {
		m, _ := newRetry(t)
		sc := &script{errs: []error{errBoom, errBoom}}
		if _, err := m(sc.handle)(tt.ctx, 0); err != nil {
			t.Fatalf("%s: error %v", tt.name, err)
		}
		if fmt.Sprint(sc.infos) != fmt.Sprint(tt.want) {
			t.Errorf("%s: attempts saw JobInfo %v, want %v", tt.name, sc.infos, tt.want)
		}
	}
}

func TestRetryHonoursRetryAfter(t *testing.T) {
	ra := func(d time.Duration) error { return &middleware.RetryAfterError{Delay: d, Err: errBoom} }
	tests := []struct {
		name      string
		err       error
		rand      float64
		opts      []middleware.RetryOption
		wantWaits []time.Duration
		wantCalls int
	}{
		{"longer than backoff", ra(5 * time.Second), 0.5, nil, []time.Duration{5 * time.Second}, 2},
		{"longer than max jittered backoff", ra(150 * time.Millisecond), 0.999, nil, []time.Duration{150 * time.Millisecond}, 2},
		{"shorter than backoff", ra(10 * time.Millisecond), 0, nil, []time.Duration{50 * time.Millisecond}, 2},
		{"wrapped", fmt.Errorf("fetch: %w", ra(3*time.Second)), 0.5, nil, []time.Duration{3 * time.Second}, 2},
		{"zero", ra(0), 0.5, nil, []time.Duration{100 * time.Millisecond}, 2},
		{"at the limit", ra(time.Minute), 0.5, nil, []time.Duration{time.Minute}, 2},
		{"beyond the limit", ra(time.Minute + 1), 0.5, nil, nil, 1},
		{"handed back", ra(time.Millisecond), 0.5, []middleware.RetryOption{middleware.WithMaxRetryAfter(0)}, nil, 1},
		{"handed back zero", ra(0), 0.5, []middleware.RetryOption{middleware.WithMaxRetryAfter(0)}, []time.Duration{100 * time.Millisecond}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, s := newRetry(t, append([]middleware.RetryOption{constRand(tt.rand)}, tt.opts...)...)
			sc := &script{errs: []error{tt.err}}
			_, err := m(sc.handle)(context.Background(), 0)
			if fmt.Sprint(s.waits) != fmt.Sprint(tt.wantWaits) {
				t.Errorf("waits = %v, want %v", s.waits, tt.wantWaits)
			}
			if sc.calls() != tt.wantCalls {
				t.Errorf("handler called %d times, want %d", sc.calls(), tt.wantCalls)
			}
			if tt.wantCalls == 1 && err != tt.err {
				t.Errorf("error = %v, want the handler's error unchanged", err)
			}
		})
	}
}

// TestRetryNeverWaitsLessThanAsked draws many retry-afters and jitters and
// checks that no wait is shorter than the server asked.
func TestRetryNeverWaitsLessThanAsked(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	draw := func() float64 { mu.Lock(); defer mu.Unlock(); return rng.Float64() }
	m, s := newRetry(t, middleware.WithRand(draw), middleware.WithMaxAttempts(6))
	for range 200 {
		var asked []time.Duration
		errs := make([]error, 5)
		for i := range errs {
			d := time.Duration(rng.Int64N(int64(2 * time.Second)))
			asked = append(asked, d)
			errs[i] = &middleware.RetryAfterError{Delay: d}
		}
		s.waits = nil
		if _, err := m((&script{errs: errs}).handle)(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
		for i, w := range s.waits {
			if w < asked[i] {
				t.Fatalf("wait %d = %v, want at least the %v asked", i, w, asked[i])
			}
		}
	}
}

func TestRetryJitterBounds(t *testing.T) {
	const (
		initial = 100 * time.Millisecond
		maxI    = 2 * time.Second
		mult    = 3.0
	)
	interval := func(i int) time.Duration { // before jitter
		return time.Duration(min(float64(initial)*math.Pow(mult, float64(i)), float64(maxI)))
	}
	for _, jitter := range []float64{0, 0.1, 0.5, 1} {
		// The extremes of the draw give the extremes of the range.
		for _, r := range []float64{0, 1} {
			m, s := newRetry(t, middleware.WithJitter(jitter), middleware.WithBackoff(initial, maxI),
				middleware.WithMultiplier(mult), middleware.WithMaxAttempts(2), constRand(r))
			m((&script{errs: []error{errBoom}}).handle)(context.Background(), 0)
			want := time.Duration(float64(initial) * (1 - jitter + 2*jitter*r))
			if len(s.waits) != 1 || s.waits[0] != want {
				t.Errorf("jitter %v, rand %v: waits = %v, want [%v]", jitter, r, s.waits, want)
			}
		}
		rng := rand.New(rand.NewPCG(3, uint64(jitter*10)))
		m, s := newRetry(t, middleware.WithJitter(jitter), middleware.WithBackoff(initial, maxI),
			middleware.WithMultiplier(mult), middleware.WithMaxAttempts(8), middleware.WithRand(rng.Float64))
		for range 100 {
			s.waits = nil
			errs := []error{errBoom, errBoom, errBoom, errBoom, errBoom, errBoom, errBoom}
			m((&script{errs: errs}).handle)(context.Background(), 0)
			if len(s.waits) != 7 {
				t.Fatalf("jitter %v: %d waits, want 7", jitter, len(s.waits))
			}
			for i, w := range s.waits {
				d := interval(i)
				lo := time.Duration(float64(d) * (1 - jitter))
				hi := time.Duration(float64(d) * (1 + jitter))
				if w < lo || w > hi {
					t.Fatalf("jitter %v: wait %d = %v, want within [%v, %v]", jitter, i, w, lo, hi)
				}
			}
		}
	}
}

func TestRetryBadRandIsClamped(t *testing.T) {
	for _, r := range []float64{-1, 2, math.NaN(), math.Inf(1)} {
		m, s := newRetry(t, constRand(r), middleware.WithMaxAttempts(2))
		m((&script{errs: []error{errBoom}}).handle)(context.Background(), 0)
		if len(s.waits) != 1 || s.waits[0] < 50*time.Millisecond || s.waits[0] > 150*time.Millisecond {
			t.Errorf("rand %v: waits = %v, want one within [50ms, 150ms]", r, s.waits)
		}
	}
}

func TestRetryPredicate(t *testing.T) {
	errNo := errors.New("no retry")
	only := func(err error) bool { return !errors.Is(err, errNo) }
	tests := []struct {
		name      string
		opts      []middleware.RetryOption
		err       error
		wantCalls int
	}{
		{"default retries plain errors", nil, errBoom, 3},
		{"default keeps Permanent", nil, middleware.Permanent(errBoom), 1},
		{"default retries an attempt's Canceled", nil, fmt.Errorf("x: %w", context.Canceled), 3},
		{"default retries an attempt's DeadlineExceeded", nil, context.DeadlineExceeded, 3},
		{"default keeps impossible costs", nil, &bucket.CostError{Cost: 9, Max: 1, Bound: "burst"}, 1},
		{"custom retries", []middleware.RetryOption{middleware.WithRetryIf(only)}, errBoom, 3},
		{"custom refuses", []middleware.RetryOption{middleware.WithRetryIf(only)}, errNo, 1},
		{"custom may retry Permanent", []middleware.RetryOption{middleware.WithRetryIf(only)}, middleware.Permanent(errBoom), 3},
	}
	for _, tt := range tests {
		m, _ := newRetry(t, tt.opts...)
		sc := &script{errs: []error{tt.err, tt.err, tt.err}}
		_, err := m(sc.handle)(context.Background(), 0)
		if sc.calls() != tt.wantCalls {
			t.Errorf("%s: handler called %d times, want %d", tt.name, sc.calls(), tt.wantCalls)
		}
		if tt.wantCalls == 1 && err != tt.err {
			t.Errorf("%s: error = %v, want the handler's error unchanged", tt.name, err)
		}
	}
}

func TestDefaultRetryable(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{errBoom, true},
		{&middleware.RetryAfterError{Delay: time.Second}, true},
		{context.Canceled, true},
		{context.DeadlineExceeded, true},
		{&bucket.WaitError{Key: "k", Delay: time.Hour}, false},
		{middleware.Permanent(errBoom), false},
		{fmt.Errorf("x: %w", middleware.Permanent(&middleware.RetryAfterError{})), false},
		{bucket.ErrEmptyKey, false},
		{bucket.ErrInvalidCost, false},
		{&bucket.LimitError{Field: "Rate"}, false},
		{&bucket.CostError{Cost: 2, Max: 1, Bound: "burst"}, false},
		{bucket.ErrClosed, true},
	}
	for _, tt := range tests {
		if got := middleware.DefaultRetryable(tt.err); got != tt.want {
			t.Errorf("DefaultRetryable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestRetryOnRetry(t *testing.T) {
	type call struct {
		attempt int
		err     error
		wait    time.Duration
	}
	var calls []call
	m, s := newRetry(t, middleware.WithJitter(0), middleware.WithOnRetry(func(ctx context.Context, err error, wait time.Duration) {
		info, _ := middleware.JobInfoFrom(ctx)
		calls = append(calls, call{info.Attempt, err, wait})
	}))
	m((&script{errs: []error{errBoom, errBoom}}).handle)(context.Background(), 0)
	want := []call{{1, errBoom, 100 * time.Millisecond}, {2, errBoom, 200 * time.Millisecond}}
	if fmt.Sprint(calls) != fmt.Sprint(want) || fmt.Sprint(s.waits) != "[100ms 200ms]" {
		t.Errorf("OnRetry calls = %v, want %v", calls, want)
	}
}

// TestRetryCancelDuringBackoff runs with the real sleeper in a synctest
// bubble: cancelling the context stops the wait at once.
func TestRetryCancelDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, err := middleware.Retry[int, int](middleware.WithBackoff(time.Hour, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		time.AfterFunc(time.Second, cancel)
		sc := &script{errs: []error{&middleware.RetryAfterError{Delay: 30 * time.Second, Err: errBoom}}}
		start := time.Now()
		_, err = m(sc.handle)(ctx, 0)
		if d := time.Since(start); d != time.Second {
			t.Errorf("Retry returned after %v, want 1s (when the context was cancelled)", d)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("errors.Is(%v, context.Canceled) = false, want true", err)
		}
		if _, ok := middleware.RetryAfter(err); ok {
			t.Errorf("RetryAfter(%v) found a delay; a cancelled job must not look retryable", err)
		}
		if sc.calls() != 1 {
			t.Errorf("handler called %d times, want 1", sc.calls())
		}
	})
}

// TestRetryRealSleep checks the default sleeper's waits in a synctest
// bubble, retry-after included.
func TestRetryRealSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, err := middleware.Retry[int, int](middleware.WithJitter(0), middleware.WithMaxAttempts(3))
		if err != nil {
			t.Fatal(err)
		}
		var starts []time.Duration
		begin := time.Now()
		errs := []error{&middleware.RetryAfterError{Delay: 7 * time.Second}, errBoom}
		n, err := m(func(ctx context.Context, job int) (int, error) {
			starts = append(starts, time.Since(begin))
			if len(starts) <= len(errs) {
				return 0, errs[len(starts)-1]
			}
			return len(starts), nil
		})(context.Background(), 0)
		if err != nil || n != 3 {
			t.Fatalf("Retry = %d, %v, want 3, nil", n, err)
		}
		want := []time.Duration{0, 7 * time.Second, 7*time.Second + 200*time.Millisecond}
		if fmt.Sprint(starts) != fmt.Sprint(want) {
			t.Errorf("attempts started at %v, want %v", starts, want)
		}
	})
}

func TestRetryContextEndedByHandler(t *testing.T) {
	m, s := newRetry(t)
	ctx, cancel := context.WithCancel(context.Background())
	sc := &script{errs: []error{errBoom}}
	_, err := m(func(c context.Context, job int) (int, error) {
		cancel()
		return sc.handle(c, job)
	})(ctx, 0)
	if err != errBoom || len(s.waits) != 0 || sc.calls() != 1 {
		t.Errorf("after the context ended: error %v, waits %v, calls %d; want errBoom, none, 1", err, s.waits, sc.calls())
	}
}

func TestRetryOptionsInvalid(t *testing.T) {
	tests := []struct {
		name string
		opt  middleware.RetryOption
	}{
		{"nil option", nil},
		{"zero attempts", middleware.WithMaxAttempts(0)},
		{"negative attempts", middleware.WithMaxAttempts(-1)},
		{"zero initial", middleware.WithBackoff(0, time.Second)},
		{"max below initial", middleware.WithBackoff(time.Second, time.Millisecond)},
		{"multiplier below 1", middleware.WithMultiplier(0.5)},
		{"multiplier NaN", middleware.WithMultiplier(math.NaN())},
		{"multiplier Inf", middleware.WithMultiplier(math.Inf(1))},
		{"negative jitter", middleware.WithJitter(-0.1)},
		{"jitter above 1", middleware.WithJitter(1.5)},
		{"jitter NaN", middleware.WithJitter(math.NaN())},
		{"negative retry-after limit", middleware.WithMaxRetryAfter(-time.Second)},
		{"nil predicate", middleware.WithRetryIf(nil)},
		{"nil OnRetry", middleware.WithOnRetry(nil)},
		{"nil sleep", middleware.WithSleep(nil)},
		{"nil rand", middleware.WithRand(nil)},
	}
	for _, tt := range tests {
		if m, err := middleware.Retry[int, int](tt.opt); err == nil || m != nil {
			t.Errorf("Retry(%s) = %v, %v, want nil and an error", tt.name, m != nil, err)
		}
	}
}

// TestRetryAroundTimeout checks that a timed-out attempt is retried while
// the job's own context is alive.
func TestRetryAroundTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		retry, err := middleware.Retry[int, int](middleware.WithJitter(0))
		if err != nil {
			t.Fatal(err)
		}
		timeout, err := middleware.Timeout[int, int](time.Second)
		if err != nil {
			t.Fatal(err)
		}
		calls := 0
		n, err := middleware.Chain(retry, timeout)(func(ctx context.Context, job int) (int, error) {
			calls++
			if calls == 1 {
				<-ctx.Done()
				return 0, ctx.Err()
			}
			return calls, nil
		})(context.Background(), 0)
		if err != nil || n != 2 {
			t.Errorf("Chain(Retry, Timeout) = %d, %v, want 2, nil", n, err)
		}
	})
}

// TestRetryNearTheDeadline: Retry does not start a wait that would end
// after the context's deadline.
func TestRetryNearTheDeadline(t *testing.T) {
	ra := &middleware.RetryAfterError{Delay: 10 * time.Second, Err: errBoom}
	tests := []struct {
		name      string
		err       error
		deadline  time.Duration
		wantCalls int
		wantSame  bool // the handler's error comes back unchanged
		wantAt    time.Duration
	}{
		{"backoff fits", errBoom, 5 * time.Second, 2, false, 100 * time.Millisecond},
		{"backoff does not fit", errBoom, 50 * time.Millisecond, 1, false, 0},
		{"retry-after fits", ra, 11 * time.Second, 2, false, 10 * time.Second},
		{"retry-after does not fit", ra, 5 * time.Second, 1, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m, err := middleware.Retry[int, int](middleware.WithJitter(0))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), tt.deadline)
				defer cancel()
				start := time.Now()
				sc := &script{errs: []error{tt.err}}
				_, err = m(sc.handle)(ctx, 0)
				if sc.calls() != tt.wantCalls || time.Since(start) != tt.wantAt {
					t.Errorf("handler called %d times, Retry returned after %v; want %d, %v", sc.calls(), time.Since(start), tt.wantCalls, tt.wantAt)
				}
				switch {
				case tt.wantCalls == 2 && err != nil:
					t.Errorf("error = %v, want nil", err)
				case tt.wantSame && err != tt.err:
					t.Errorf("error = %v, want the handler's error unchanged", err)
				case tt.wantCalls == 1 && !tt.wantSame && (!errors.Is(err, errBoom) || errors.Is(err, context.DeadlineExceeded)):
					t.Errorf("error = %v, want the handler's error wrapped, not a deadline", err)
				}
			})
		})
	}
}
