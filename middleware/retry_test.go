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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/middleware"
)

// script is a handler that fails with errs[i] on its i-th call (nil: it
// succeeds), returns the number of the call, and records the jobinfo of
// each call.
type script struct {
	mu    sync.Mutex
	errs  []error
	infos []jobinfo.Info
}

func (s *script) handle(ctx context.Context, job int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	info, _ := jobinfo.FromContext(ctx)
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
	return noSleep(ctx, d)
}

// noSleep returns at once: nil, or the context's cause if it has ended.
func noSleep(ctx context.Context, _ time.Duration) error { return context.Cause(ctx) }

// constRand returns a WithRand option that always draws r.
func constRand(r float64) middleware.RetryOption {
	return middleware.WithRand(func() float64 { return r })
}

// newRetry builds a Retry with a recording sleeper and the given options.
func newRetry(opts ...middleware.RetryOption) (middleware.Middleware, *sleeps) {
	s := new(sleeps)
	return middleware.Retry(append([]middleware.RetryOption{middleware.WithSleep(s.sleep)}, opts...)...), s
}

// assertSameError checks that err is want itself: not wrapped, not a copy.
func assertSameError(t *testing.T, want, err error) {
	t.Helper()
	assert.Truef(t, err == want, "error = %v, want the handler's error %v unchanged", err, want)
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
			m, s := newRetry(middleware.WithMaxAttempts(tt.attempts), middleware.WithJitter(0),
				middleware.WithBackoff(100*time.Millisecond, time.Second))
			sc := &script{errs: tt.errs}
			n, err := middleware.Wrap(sc.handle, m)(context.Background(), 0)
			assert.Equal(t, tt.wantCalls, sc.calls(), "handler calls")
			assert.Equal(t, tt.wantCalls, n, "result")
			if tt.wantErr {
				assert.ErrorIs(t, err, errBoom)
			} else {
				assert.NoError(t, err)
			}
			assert.Equal(t, tt.wantWaits, s.waits)
		})
	}
}

func TestRetryExhaustedErrorSaysSo(t *testing.T) {
	m, _ := newRetry(middleware.WithMaxAttempts(2))
	sc := &script{errs: []error{errBoom, errBoom}}
	_, err := middleware.Wrap(sc.handle, m)(context.Background(), 0)
	assert.EqualError(t, err, "middleware: gave up after 2 attempts: boom")
}

func TestRetryAttemptNumbers(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want []jobinfo.Info
	}{
		{"no jobinfo", context.Background(), []jobinfo.Info{{Attempt: 1}, {Attempt: 2}, {Attempt: 3}}},
		{"from a dispatcher", jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "k", Attempt: 2}),
			[]jobinfo.Info{{Key: "k", Attempt: 2}, {Key: "k", Attempt: 3}, {Key: "k", Attempt: 4}}},
	}
	for _, tt := range tests {
		m, _ := newRetry()
		sc := &script{errs: []error{errBoom, errBoom}}
		_, err := middleware.Wrap(sc.handle, m)(tt.ctx, 0)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.want, sc.infos, "%s: the jobinfo the attempts saw", tt.name)
	}
}

// TestRetryHonoursRetryAfter covers *middleware.RetryAfterError and an
// error type of the caller's with a RetryAfter method (slowDown).
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
		{"caller's type", slowDown(5 * time.Second), 0.5, nil, []time.Duration{5 * time.Second}, 2},
		{"caller's type wrapped", fmt.Errorf("fetch: %w", slowDown(3*time.Second)), 0.5, nil, []time.Duration{3 * time.Second}, 2},
		{"caller's type negative", slowDown(-time.Second), 0.5, nil, []time.Duration{100 * time.Millisecond}, 2},
		{"caller's type beyond the limit", slowDown(time.Minute + 1), 0.5, nil, nil, 1},
		{"caller's type handed back", slowDown(time.Millisecond), 0.5, []middleware.RetryOption{middleware.WithMaxRetryAfter(0)}, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, s := newRetry(append([]middleware.RetryOption{constRand(tt.rand)}, tt.opts...)...)
			sc := &script{errs: []error{tt.err}}
			_, err := middleware.Wrap(sc.handle, m)(context.Background(), 0)
			assert.Equal(t, tt.wantWaits, s.waits)
			assert.Equal(t, tt.wantCalls, sc.calls(), "handler calls")
			if tt.wantCalls == 1 {
				assertSameError(t, tt.err, err)
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
	m, s := newRetry(middleware.WithRand(draw), middleware.WithMaxAttempts(6))
	for range 200 {
		var asked []time.Duration
		errs := make([]error, 5)
		for i := range errs {
			d := time.Duration(rng.Int64N(int64(2 * time.Second)))
			asked = append(asked, d)
			errs[i] = &middleware.RetryAfterError{Delay: d}
		}
		s.waits = nil
		_, err := middleware.Wrap((&script{errs: errs}).handle, m)(context.Background(), 0)
		require.NoError(t, err)
		require.Len(t, s.waits, len(asked))
		for i, w := range s.waits {
			require.GreaterOrEqual(t, w, asked[i], "wait %d", i)
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
			m, s := newRetry(middleware.WithJitter(jitter), middleware.WithBackoff(initial, maxI),
				middleware.WithMultiplier(mult), middleware.WithMaxAttempts(2), constRand(r))
			middleware.Wrap((&script{errs: []error{errBoom}}).handle, m)(context.Background(), 0)
			want := time.Duration(float64(initial) * (1 - jitter + 2*jitter*r))
			assert.Equal(t, []time.Duration{want}, s.waits, "jitter %v, rand %v", jitter, r)
		}
		rng := rand.New(rand.NewPCG(3, uint64(jitter*10)))
		m, s := newRetry(middleware.WithJitter(jitter), middleware.WithBackoff(initial, maxI),
			middleware.WithMultiplier(mult), middleware.WithMaxAttempts(8), middleware.WithRand(rng.Float64))
		h := middleware.Wrap(func(context.Context, int) (int, error) { return 0, errBoom }, m)
		for range 100 {
			s.waits = nil
			h(context.Background(), 0)
			require.Len(t, s.waits, 7, "jitter %v", jitter)
			for i, w := range s.waits {
				d := interval(i)
				lo := time.Duration(float64(d) * (1 - jitter))
				hi := time.Duration(float64(d) * (1 + jitter))
				require.Truef(t, w >= lo && w <= hi, "jitter %v: wait %d = %v, want within [%v, %v]", jitter, i, w, lo, hi)
			}
		}
	}
}

func TestRetryBadRandIsClamped(t *testing.T) {
	for _, r := range []float64{-1, 2, math.NaN(), math.Inf(1)} {
		m, s := newRetry(constRand(r), middleware.WithMaxAttempts(2))
		middleware.Wrap((&script{errs: []error{errBoom}}).handle, m)(context.Background(), 0)
		if assert.Len(t, s.waits, 1, "rand %v", r) {
			assert.Truef(t, s.waits[0] >= 50*time.Millisecond && s.waits[0] <= 150*time.Millisecond,
				"rand %v: wait %v, want within [50ms, 150ms]", r, s.waits[0])
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
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newRetry(tt.opts...)
			sc := &script{errs: []error{tt.err, tt.err, tt.err}}
			_, err := middleware.Wrap(sc.handle, m)(context.Background(), 0)
			assert.Equal(t, tt.wantCalls, sc.calls(), "handler calls")
			if tt.wantCalls == 1 {
				assertSameError(t, tt.err, err)
			}
		})
	}
}

func TestDefaultRetryable(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{errBoom, true},
		{&middleware.RetryAfterError{Delay: time.Second}, true},
		{slowDown(time.Second), true},
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
		assert.Equal(t, tt.want, middleware.DefaultRetryable(tt.err), "DefaultRetryable(%v)", tt.err)
	}
}

func TestRetryOnRetry(t *testing.T) {
	type call struct {
		attempt int
		err     error
		wait    time.Duration
	}
	var calls []call
	m, s := newRetry(middleware.WithJitter(0), middleware.WithOnRetry(func(ctx context.Context, err error, wait time.Duration) {
		info, _ := jobinfo.FromContext(ctx)
		calls = append(calls, call{info.Attempt, err, wait})
	}))
	middleware.Wrap((&script{errs: []error{errBoom, errBoom}}).handle, m)(context.Background(), 0)
	assert.Equal(t, []call{{1, errBoom, 100 * time.Millisecond}, {2, errBoom, 200 * time.Millisecond}}, calls)
	assert.Equal(t, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}, s.waits)
}

// TestRetryCancelDuringBackoff runs with the real sleeper in a synctest
// bubble: cancelling the context stops the wait at once.
func TestRetryCancelDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := middleware.Retry(middleware.WithBackoff(time.Hour, time.Hour))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		time.AfterFunc(time.Second, cancel)
		sc := &script{errs: []error{&middleware.RetryAfterError{Delay: 30 * time.Second, Err: errBoom}}}
		start := time.Now()
		_, err := middleware.Wrap(sc.handle, m)(ctx, 0)
		assert.Equal(t, time.Second, time.Since(start), "Retry returned after; want when the context was cancelled")
		assert.ErrorIs(t, err, context.Canceled)
		_, ok := middleware.RetryAfter(err)
		assert.False(t, ok, "RetryAfter(%v) found a delay; a cancelled job must not look retryable", err)
		assert.Equal(t, 1, sc.calls(), "handler calls")
	})
}

// TestRetryRealSleep checks the default sleeper's waits in a synctest
// bubble, retry-after included.
func TestRetryRealSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := middleware.Retry(middleware.WithJitter(0), middleware.WithMaxAttempts(3))
		var starts []time.Duration
		begin := time.Now()
		errs := []error{&middleware.RetryAfterError{Delay: 7 * time.Second}, errBoom}
		n, err := middleware.Wrap(func(ctx context.Context, job int) (int, error) {
			starts = append(starts, time.Since(begin))
			if len(starts) <= len(errs) {
				return 0, errs[len(starts)-1]
			}
			return len(starts), nil
		}, m)(context.Background(), 0)
		require.NoError(t, err)
		assert.Equal(t, 3, n)
		assert.Equal(t, []time.Duration{0, 7 * time.Second, 7*time.Second + 200*time.Millisecond}, starts, "attempts' starts")
	})
}

func TestRetryContextEndedByHandler(t *testing.T) {
	m, s := newRetry()
	ctx, cancel := context.WithCancel(context.Background())
	sc := &script{errs: []error{errBoom}}
	_, err := middleware.Wrap(func(c context.Context, job int) (int, error) {
		cancel()
		return sc.handle(c, job)
	}, m)(ctx, 0)
	assertSameError(t, errBoom, err)
	assert.Empty(t, s.waits)
	assert.Equal(t, 1, sc.calls(), "handler calls")
}

// TestRetryOptionsInvalid: Retry panics on an option that is nil or
// invalid, with the option's message.
func TestRetryOptionsInvalid(t *testing.T) {
	tests := []struct {
		name string
		opt  middleware.RetryOption
		want string
	}{
		{"nil option", nil, "middleware: Retry: option 0 is nil"},
		{"zero attempts", middleware.WithMaxAttempts(0), "middleware: WithMaxAttempts: must be at least 1, got 0"},
		{"negative attempts", middleware.WithMaxAttempts(-1), "middleware: WithMaxAttempts: must be at least 1, got -1"},
		{"zero initial", middleware.WithBackoff(0, time.Second), "middleware: WithBackoff: want 0 < initial ≤ max, got initial 0s, max 1s"},
		{"max below initial", middleware.WithBackoff(time.Second, time.Millisecond), "middleware: WithBackoff: want 0 < initial ≤ max, got initial 1s, max 1ms"},
		{"multiplier below 1", middleware.WithMultiplier(0.5), "middleware: WithMultiplier: must be finite and at least 1, got 0.5"},
		{"multiplier NaN", middleware.WithMultiplier(math.NaN()), "middleware: WithMultiplier: must be finite and at least 1, got NaN"},
		{"multiplier Inf", middleware.WithMultiplier(math.Inf(1)), "middleware: WithMultiplier: must be finite and at least 1, got +Inf"},
		{"negative jitter", middleware.WithJitter(-0.1), "middleware: WithJitter: must be in [0, 1], got -0.1"},
		{"jitter above 1", middleware.WithJitter(1.5), "middleware: WithJitter: must be in [0, 1], got 1.5"},
		{"jitter NaN", middleware.WithJitter(math.NaN()), "middleware: WithJitter: must be in [0, 1], got NaN"},
		{"negative retry-after limit", middleware.WithMaxRetryAfter(-time.Second), "middleware: WithMaxRetryAfter: must not be negative, got -1s"},
		{"nil predicate", middleware.WithRetryIf(nil), "middleware: WithRetryIf: nil predicate"},
		{"nil OnRetry", middleware.WithOnRetry(nil), "middleware: WithOnRetry: nil function"},
		{"nil sleep", middleware.WithSleep(nil), "middleware: WithSleep: nil function"},
		{"nil rand", middleware.WithRand(nil), "middleware: WithRand: nil function"},
	}
	for _, tt := range tests {
		assert.PanicsWithValue(t, tt.want, func() { middleware.Retry(tt.opt) }, tt.name)
	}
	assert.PanicsWithValue(t, "middleware: Retry: option 1 is nil", func() {
		middleware.Retry(middleware.WithJitter(0), nil)
	})
}

// TestRetryAroundTimeout checks that a timed-out attempt is retried while
// the job's own context is alive.
func TestRetryAroundTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		calls := 0
		n, err := middleware.Wrap(func(ctx context.Context, job int) (int, error) {
			calls++
			if calls == 1 {
				<-ctx.Done()
				return 0, ctx.Err()
			}
			return calls, nil
		}, middleware.Retry(middleware.WithJitter(0)), middleware.Timeout(time.Second))(context.Background(), 0)
		require.NoError(t, err)
		assert.Equal(t, 2, n)
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
				m := middleware.Retry(middleware.WithJitter(0))
				ctx, cancel := context.WithTimeout(context.Background(), tt.deadline)
				defer cancel()
				start := time.Now()
				sc := &script{errs: []error{tt.err}}
				_, err := middleware.Wrap(sc.handle, m)(ctx, 0)
				assert.Equal(t, tt.wantCalls, sc.calls(), "handler calls")
				assert.Equal(t, tt.wantAt, time.Since(start), "Retry returned after")
				switch {
				case tt.wantCalls == 2:
					assert.NoError(t, err)
				case tt.wantSame:
					assertSameError(t, tt.err, err)
				default: // the handler's error wrapped, not a deadline
					assert.ErrorIs(t, err, errBoom)
					assert.NotErrorIs(t, err, context.DeadlineExceeded)
				}
			})
		})
	}
}
