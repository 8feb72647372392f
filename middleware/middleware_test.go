package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/middleware"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tag returns a Middleware that appends name to the trace before and after
// the rest of the chain, and wraps the error it returns in name(...), so
// that the error tells the order in which the middleware saw it.
func tag(trace *[]string, name string) middleware.Middleware {
	return func(next middleware.Next) middleware.Next {
		return func(ctx context.Context) error {
			*trace = append(*trace, name+">")
			err := next(ctx)
			*trace = append(*trace, "<"+name)
			return fmt.Errorf("%s(%w)", name, err)
		}
	}
}

var errHandler = errors.New("h")

// traced returns a handler that appends "h" to the trace and fails with
// errHandler, its result the job as a string.
func traced(trace *[]string) middleware.Handler[int, string] {
	return func(ctx context.Context, job int) (string, error) {
		*trace = append(*trace, "h")
		return fmt.Sprint(job), errHandler
	}
}

func TestChainOrder(t *testing.T) {
	tests := []struct {
		names     []string
		wantTrace string
		wantErr   string
	}{
		{nil, "h", "h"},
		{[]string{"m1"}, "m1> h <m1", "m1(h)"},
		{[]string{"m1", "m2"}, "m1> m2> h <m2 <m1", "m1(m2(h))"},
		{[]string{"m1", "m2", "m3"}, "m1> m2> m3> h <m3 <m2 <m1", "m1(m2(m3(h)))"},
	}
	for _, tt := range tests {
		for _, how := range []string{"Wrap(h, mws...)", "Wrap(h, Chain(mws...))"} {
			t.Run(fmt.Sprint(tt.names, how), func(t *testing.T) {
				var trace []string
				var mws []middleware.Middleware
				for _, n := range tt.names {
					mws = append(mws, tag(&trace, n))
				}
				if how != "Wrap(h, mws...)" {
					mws = []middleware.Middleware{middleware.Chain(mws...)}
				}
				out, err := middleware.Wrap(traced(&trace), mws...)(context.Background(), 7)
				assert.Equal(t, "7", out)
				require.ErrorIs(t, err, errHandler)
				assert.EqualError(t, err, tt.wantErr)
				assert.Equal(t, tt.wantTrace, strings.Join(trace, " "), "call order")
			})
		}
	}
}

func TestChainSameAsNesting(t *testing.T) {
	var a, b []string
	next := func(ctx context.Context) error { return errHandler }
	chained := middleware.Chain(tag(&a, "m1"), tag(&a, "m2"))(next)(context.Background())
	nested := tag(&b, "m1")(tag(&b, "m2")(next))(context.Background())
	assert.Equal(t, nested.Error(), chained.Error(), "Chain(m1, m2)(next) against m1(m2(next))")
	assert.Equal(t, b, a, "traces of Chain(m1, m2)(next) and m1(m2(next))")
}

func TestChainCopiesItsArguments(t *testing.T) {
	var trace []string
	mws := []middleware.Middleware{tag(&trace, "m1"), tag(&trace, "m2")}
	chain := middleware.Chain(mws...)
	mws[0] = tag(&trace, "changed")
	err := chain(func(context.Context) error { return errHandler })(context.Background())
	assert.EqualError(t, err, "m1(m2(h))", "Chain after the caller changed its slice")
}

func TestChainPanicsOnNil(t *testing.T) {
	var trace []string
	assert.PanicsWithValue(t, "middleware: Chain: middleware 0 is nil", func() { middleware.Chain(nil) })
	assert.PanicsWithValue(t, "middleware: Chain: middleware 1 is nil", func() { middleware.Chain(tag(&trace, "m1"), nil) })
	assert.PanicsWithValue(t, "middleware: Chain: nil Next", func() { middleware.Chain()(nil) })
	assert.PanicsWithValue(t, "middleware: Chain: nil Next", func() { middleware.Chain(tag(&trace, "m1"))(nil) })

	// A Middleware that returns a nil Next is found when the chain is
	// built around a call, before anything runs.
	broken := func(middleware.Next) middleware.Next { return nil }
	assert.PanicsWithValue(t, "middleware: middleware 1 returned a nil Next", func() {
		middleware.Chain(tag(&trace, "m1"), broken)(func(context.Context) error { return nil })
	})
	h := middleware.Wrap(traced(&trace), tag(&trace, "m1"), broken)
	assert.PanicsWithValue(t, "middleware: middleware 1 returned a nil Next", func() { h(context.Background(), 0) })
	assert.Empty(t, trace, "nothing may run before the panic")
}

// TestNilHandler: Wrap and Keyed refuse a nil handler when they wrap it,
// not at the first job, whatever the middleware.
func TestNilHandler(t *testing.T) {
	lim := newLimiter(t, bucket.PerSecond(1))
	mws := map[string]middleware.Middleware{
		"Timeout":   middleware.Timeout(time.Second),
		"Retry":     middleware.Retry(),
		"Logging":   middleware.Logging(slog.Default()),
		"RateLimit": middleware.RateLimit(lim),
	}
	for name, m := range mws {
		assert.PanicsWithValue(t, "middleware: Wrap: nil handler", func() { middleware.Wrap[int, int](nil, m) }, name)
	}
	assert.PanicsWithValue(t, "middleware: Wrap: nil handler", func() { middleware.Wrap[int, int](nil) })
	assert.PanicsWithValue(t, "middleware: Wrap: middleware 0 is nil", func() {
		middleware.Wrap(func(context.Context, int) (int, error) { return 0, nil }, nil)
	})
}

// TestWrapReturnsTheLastAttemptsResult: the caller gets the result of the
// handler's last call, whatever the middleware did with its error, and
// the zero result when no middleware called it.
func TestWrapReturnsTheLastAttemptsResult(t *testing.T) {
	errStop := errors.New("stop")
	stop := func(middleware.Next) middleware.Next {
		return func(context.Context) error { return errStop }
	}
	swallow := func(next middleware.Next) middleware.Next {
		return func(ctx context.Context) error { next(ctx); return nil }
	}
	tests := []struct {
		name     string
		errs     []error
		mws      []middleware.Middleware
		wantN    int
		wantErr  error // errors.Is; nil: no error
		wantCall int
	}{
		{"no middleware", []error{errBoom}, nil, 1, errBoom, 1},
		{"succeeds on the third attempt", []error{errBoom, errBoom}, []middleware.Middleware{middleware.Retry(middleware.WithSleep(noSleep))}, 3, nil, 3},
		{"attempts run out", []error{errBoom, errBoom, errBoom}, []middleware.Middleware{middleware.Retry(middleware.WithSleep(noSleep))}, 3, errBoom, 3},
		{"not retryable", []error{middleware.Permanent(errBoom)}, []middleware.Middleware{middleware.Retry(middleware.WithSleep(noSleep))}, 1, errBoom, 1},
		{"error swallowed", []error{errBoom}, []middleware.Middleware{swallow}, 1, nil, 1},
		{"handler never called", nil, []middleware.Middleware{stop}, 0, errStop, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := &script{errs: tt.errs}
			n, err := middleware.Wrap(sc.handle, tt.mws...)(context.Background(), 0)
			assert.Equal(t, tt.wantN, n, "result")
			if tt.wantErr == nil {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, tt.wantErr)
			}
			assert.Equal(t, tt.wantCall, sc.calls(), "handler calls")
		})
	}
}

func TestRetryAfter(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name   string
		err    error
		want   time.Duration
		wantOK bool
	}{
		{"nil", nil, 0, false},
		{"plain", base, 0, false},
		{"direct", &middleware.RetryAfterError{Delay: 3 * time.Second, Err: base}, 3 * time.Second, true},
		{"wrapped", fmt.Errorf("fetch: %w", &middleware.RetryAfterError{Delay: 5 * time.Second}), 5 * time.Second, true},
		{"joined", errors.Join(base, &middleware.RetryAfterError{Delay: time.Minute}), time.Minute, true},
		{"negative", &middleware.RetryAfterError{Delay: -time.Second}, 0, true},
		{"permanent", middleware.Permanent(&middleware.RetryAfterError{Delay: time.Second}), time.Second, true},
		{"caller's type", slowDown(4 * time.Second), 4 * time.Second, true},
		{"caller's type wrapped", fmt.Errorf("fetch: %w", slowDown(4*time.Second)), 4 * time.Second, true},
		{"caller's type negative", slowDown(-time.Second), 0, true},
	}
	for _, tt := range tests {
		got, ok := middleware.RetryAfter(tt.err)
		assert.Equal(t, tt.want, got, tt.name)
		assert.Equal(t, tt.wantOK, ok, tt.name)
	}
}

// slowDown is an error type of the caller's that asks for a retry-after
// with a method of its own, not through *middleware.RetryAfterError.
type slowDown time.Duration

func (e slowDown) Error() string             { return "slow down for " + time.Duration(e).String() }
func (e slowDown) RetryAfter() time.Duration { return time.Duration(e) }

func TestRetryAfterErrorMessage(t *testing.T) {
	tests := []struct {
		err  *middleware.RetryAfterError
		want string
	}{
		{&middleware.RetryAfterError{Delay: 2 * time.Second}, "middleware: retry after 2s"},
		{&middleware.RetryAfterError{Delay: 1500 * time.Millisecond, Err: errors.New("upstream busy")}, "upstream busy (retry after 1.5s)"},
	}
	for _, tt := range tests {
		assert.EqualError(t, tt.err, tt.want)
	}
	base := errors.New("boom")
	assert.ErrorIs(t, &middleware.RetryAfterError{Err: base}, base)
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad request")
	err := middleware.Permanent(base)
	assert.ErrorIs(t, err, middleware.ErrPermanent)
	assert.ErrorIs(t, err, base)
	assert.EqualError(t, err, base.Error())
	assert.NoError(t, middleware.Permanent(nil))
	assert.NotErrorIs(t, base, middleware.ErrPermanent)
}

// TestJobInfo checks the round trip of package jobinfo, which has no test
// file of its own.
func TestKeyed(t *testing.T) {
	h := middleware.Keyed(func(ctx context.Context, job int) (jobinfo.Info, error) {
		info, _ := jobinfo.FromContext(ctx)
		return info, nil
	}, func(job int) string { return fmt.Sprint("k", job) })
	tests := []struct {
		name string
		ctx  context.Context
		want jobinfo.Info
	}{
		{"no key", context.Background(), jobinfo.Info{Key: "k7", Attempt: 1}},
		{"from a dispatcher", jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "d", Attempt: 4}), jobinfo.Info{Key: "d", Attempt: 4}},
	}
	for _, tt := range tests {
		got, err := h(tt.ctx, 7)
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, tt.name)
	}
	const msg = "middleware: Keyed: nil handler or key function"
	assert.PanicsWithValue(t, msg, func() { middleware.Keyed[int, int](nil, func(int) string { return "" }) })
	assert.PanicsWithValue(t, msg, func() {
		middleware.Keyed(func(context.Context, int) (int, error) { return 0, nil }, nil)
	})
}
