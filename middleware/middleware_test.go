package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/middleware"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tag returns a Middleware that appends name to the trace before and after
// the handler it wraps.
func tag(trace *[]string, name string) middleware.Middleware[int, string] {
	return func(next middleware.Handler[int, string]) middleware.Handler[int, string] {
		return func(ctx context.Context, job int) (string, error) {
			*trace = append(*trace, name+">")
			r, err := next(ctx, job)
			*trace = append(*trace, "<"+name)
			return name + "(" + r + ")", err
		}
	}
}

func TestChainOrder(t *testing.T) {
	h := func(ctx context.Context, job int) (string, error) { return fmt.Sprint(job), nil }
	tests := []struct {
		names     []string
		wantTrace string
		wantOut   string
	}{
		{nil, "", "7"},
		{[]string{"m1"}, "m1> <m1", "m1(7)"},
		{[]string{"m1", "m2"}, "m1> m2> <m2 <m1", "m1(m2(7))"},
		{[]string{"m1", "m2", "m3"}, "m1> m2> m3> <m3 <m2 <m1", "m1(m2(m3(7)))"},
	}
	for _, tt := range tests {
		var trace []string
		var mws []middleware.Middleware[int, string]
		for _, n := range tt.names {
			mws = append(mws, tag(&trace, n))
		}
		out, err := middleware.Chain(mws...)(h)(context.Background(), 7)
		if err != nil {
			t.Fatalf("Chain(%v)(h)(7) error %v", tt.names, err)
		}
		if got := strings.Join(trace, " "); got != tt.wantTrace {
			t.Errorf("Chain(%v) call order = %q, want %q", tt.names, got, tt.wantTrace)
		}
		if out != tt.wantOut {
			t.Errorf("Chain(%v)(h)(7) = %q, want %q", tt.names, out, tt.wantOut)
		}
	}
}

func TestChainSameAsNesting(t *testing.T) {
	var a, b []string
	h := func(ctx context.Context, job int) (string, error) { return "h", nil }
	chained, _ := middleware.Chain(tag(&a, "m1"), tag(&a, "m2"))(h)(context.Background(), 0)
	nested, _ := tag(&b, "m1")(tag(&b, "m2")(h))(context.Background(), 0)
	if chained != nested || strings.Join(a, " ") != strings.Join(b, " ") {
		t.Errorf("Chain(m1, m2)(h) = %q with trace %v, want m1(m2(h)) = %q with trace %v", chained, a, nested, b)
	}
}

func TestChainCopiesItsArguments(t *testing.T) {
	var trace []string
	mws := []middleware.Middleware[int, string]{tag(&trace, "m1"), tag(&trace, "m2")}
	chain := middleware.Chain(mws...)
	mws[0] = tag(&trace, "changed")
	out, _ := chain(func(context.Context, int) (string, error) { return "h", nil })(context.Background(), 0)
	if out != "m1(m2(h))" {
		t.Errorf("Chain after the caller changed its slice = %q, want m1(m2(h))", out)
	}
}

func TestChainPanicsOnNil(t *testing.T) {
	mustPanic(t, "Chain(nil)", func() { middleware.Chain[int, string](nil) })
	mustPanic(t, "Chain()(nil)", func() { middleware.Chain[int, string]()(nil) })
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
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
	}
	for _, tt := range tests {
		got, ok := middleware.RetryAfter(tt.err)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("RetryAfter(%s) = %v, %v, want %v, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestRetryAfterErrorMessage(t *testing.T) {
	tests := []struct {
		err  *middleware.RetryAfterError
		want string
	}{
		{&middleware.RetryAfterError{Delay: 2 * time.Second}, "middleware: retry after 2s"},
		{&middleware.RetryAfterError{Delay: 1500 * time.Millisecond, Err: errors.New("upstream busy")}, "upstream busy (retry after 1.5s)"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	base := errors.New("boom")
	if err := (&middleware.RetryAfterError{Err: base}); !errors.Is(err, base) {
		t.Errorf("errors.Is(RetryAfterError{Err: base}, base) = false, want true")
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad request")
	err := middleware.Permanent(base)
	if !errors.Is(err, middleware.ErrPermanent) || !errors.Is(err, base) {
		t.Errorf("Permanent(base) matches ErrPermanent %v and base %v, want both", errors.Is(err, middleware.ErrPermanent), errors.Is(err, base))
	}
	if err.Error() != base.Error() {
		t.Errorf("Permanent(base).Error() = %q, want %q", err.Error(), base.Error())
	}
	if middleware.Permanent(nil) != nil {
		t.Errorf("Permanent(nil) != nil")
	}
	if errors.Is(base, middleware.ErrPermanent) {
		t.Errorf("errors.Is(base, ErrPermanent) = true, want false")
	}
}

func TestJobInfo(t *testing.T) {
	if info, ok := middleware.JobInfoFrom(context.Background()); ok {
		t.Errorf("JobInfoFrom(Background) = %+v, true, want false", info)
	}
	want := middleware.JobInfo{Key: "tenant-1", Attempt: 3}
	got, ok := middleware.JobInfoFrom(middleware.WithJobInfo(context.Background(), want))
	if !ok || got != want {
		t.Errorf("JobInfoFrom(WithJobInfo(%+v)) = %+v, %v, want %+v, true", want, got, ok, want)
	}
}

func TestKeyed(t *testing.T) {
	keyed, err := middleware.Keyed[int, middleware.JobInfo](func(job int) string { return fmt.Sprint("k", job) })
	if err != nil {
		t.Fatal(err)
	}
	h := keyed(func(ctx context.Context, job int) (middleware.JobInfo, error) {
		info, _ := middleware.JobInfoFrom(ctx)
		return info, nil
	})
	tests := []struct {
		ctx  context.Context
		want middleware.JobInfo
	}{
		{context.Background(), middleware.JobInfo{Key: "k7", Attempt: 1}},
		{middleware.WithJobInfo(context.Background(), middleware.JobInfo{Key: "d", Attempt: 4}), middleware.JobInfo{Key: "d", Attempt: 4}},
	}
	for _, tt := range tests {
		if got, _ := h(tt.ctx, 7); got != tt.want {
			t.Errorf("Keyed handler saw %+v, want %+v", got, tt.want)
		}
	}
	if _, err := middleware.Keyed[int, int](nil); err == nil {
		t.Errorf("Keyed(nil) error = nil, want an error")
	}
}

// TestNilHandler: every middleware refuses a nil handler when it wraps it,
// not at the first job.
func TestNilHandler(t *testing.T) {
	lim := newLimiter(t, bucket.PerSecond(1))
	key := func(int) string { return "k" }
	mws := map[string]func() (middleware.Middleware[int, int], error){
		"Timeout":   func() (middleware.Middleware[int, int], error) { return middleware.Timeout[int, int](time.Second) },
		"Retry":     func() (middleware.Middleware[int, int], error) { return middleware.Retry[int, int]() },
		"Logging":   func() (middleware.Middleware[int, int], error) { return middleware.Logging[int, int](slog.Default()) },
		"RateLimit": func() (middleware.Middleware[int, int], error) { return middleware.RateLimit[int, int](lim, key) },
		"Keyed":     func() (middleware.Middleware[int, int], error) { return middleware.Keyed[int, int](key) },
	}
	for name, mk := range mws {
		m, err := mk()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		func() {
			defer func() {
				if p := recover(); p != "middleware: "+name+": nil handler" {
					t.Errorf("%s(nil) panicked with %v, want a message naming it", name, p)
				}
			}()
			m(nil)
		}()
	}
}
