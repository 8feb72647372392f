package middleware_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/limitheader"
	"github.com/leakybucket/leakybucket/middleware"
)

// reports records what CheckResponse reports, and learns if learns.
type reports struct {
	got    []bucket.Feedback
	learns bool
}

func (r *reports) Report(_ context.Context, fb bucket.Feedback) bool {
	r.got = append(r.got, fb)
	return r.learns
}

func response(code int, kv ...string) *http.Response {
	return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: headers(kv...)}
}

func TestCheckResponse(t *testing.T) {
	learning := &reports{learns: true}
	ctx := bucket.NewReporterContext(context.Background(), learning)

	// A 429 that says nothing: the key learned it, retry at once.
	err := middleware.CheckResponse(ctx, response(http.StatusTooManyRequests))
	var ra *middleware.RetryAfterError
	require.ErrorAs(t, err, &ra)
	assert.Zero(t, ra.Delay)
	var se *middleware.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusTooManyRequests, se.StatusCode)
	assert.Equal(t, []bucket.Feedback{{Throttled: true}}, learning.got)

	// Without a Reporter, or one whose key does not learn: FromResponse's.
	for _, ctx := range []context.Context{
		context.Background(),
		bucket.NewReporterContext(context.Background(), &reports{}),
	} {
		require.ErrorAs(t, middleware.CheckResponse(ctx, response(http.StatusTooManyRequests)), &ra)
		assert.Equal(t, middleware.DefaultRetryAfter, ra.Delay)
	}

	// A 429 with a delay: the delay, and no throttle (the pause is the
	// answer).
	learning.got = nil
	require.ErrorAs(t, middleware.CheckResponse(ctx, response(http.StatusTooManyRequests, "Retry-After", "3")), &ra)
	assert.Equal(t, 3*time.Second, ra.Delay)
	assert.Empty(t, learning.got, "nothing but a delay to learn")

	// A success announcing its policy and what is left: reported, no
	// error.
	learning.got = nil
	ok := response(http.StatusOK, "RateLimit-Policy", `"burst";q=100;w=60, "day";q=1000;w=86400`, "RateLimit", `"burst";r=50;t=30, "day";r=900;t=9`)
	require.NoError(t, middleware.CheckResponse(ctx, ok))
	assert.Equal(t, []bucket.Feedback{{Quota: 1000, Window: 24 * time.Hour, Remaining: 50, Reset: 30 * time.Second, HasRemaining: true}}, learning.got)

	// A 503 without Retry-After is an ordinary failure, not a throttle.
	learning.got = nil
	assert.NoError(t, middleware.CheckResponse(ctx, response(http.StatusServiceUnavailable)))
	assert.Empty(t, learning.got)
	assert.NoError(t, middleware.CheckResponse(ctx, nil))
}

// Feedback takes the slowest policy counting requests with a window, and
// the slowest pace of what remains (none left first).
func TestFeedback(t *testing.T) {
	sig := limitheader.Signal{
		Policies: []limitheader.Policy{
			{Quota: 10, Window: time.Second},
			{Quota: 100, Window: time.Minute}, // the slowest: 0.6 s a unit
			{Quota: 1, Window: time.Hour, Unit: "content-bytes"},
			{Quota: 5000}, // no window
		},
		Remaining: []limitheader.Remaining{
			{Units: 10, HasUnits: true, Reset: time.Second, HasReset: true},
			{Units: 2, HasUnits: true, Reset: 10 * time.Second, HasReset: true}, // 5 s a unit
			{Units: 1, HasUnits: true},                                          // no reset
		},
	}
	assert.Equal(t, bucket.Feedback{Quota: 100, Window: time.Minute, Remaining: 2, Reset: 10 * time.Second, HasRemaining: true}, middleware.Feedback(sig))
	sig.Remaining = append(sig.Remaining, limitheader.Remaining{Units: 0, HasUnits: true, Reset: time.Second, HasReset: true})
	fb := middleware.Feedback(sig)
	assert.Equal(t, int64(0), fb.Remaining, "none left is the slowest")
	assert.Equal(t, time.Second, fb.Reset)
	assert.True(t, middleware.Feedback(limitheader.Signal{}).IsZero())
}

// RateLimit's calls of a learned limit report to the Limiter: a 429
// without headers slows the key.
func TestRateLimitLearns(t *testing.T) {
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(100).WithFloor(1, time.Second))
	require.NoError(t, err)
	call := middleware.RateLimit(lim)(func(ctx context.Context) error {
		return middleware.CheckResponse(ctx, response(http.StatusTooManyRequests))
	})
	err = call(jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "A"}))
	var ra *middleware.RetryAfterError
	require.True(t, errors.As(err, &ra))
	assert.Zero(t, ra.Delay, "the key learned the 429")
	iv, err := lim.Learn(context.Background(), "A", bucket.Feedback{})
	require.NoError(t, err)
	assert.Greater(t, iv, 10*time.Millisecond, "the key's rate did not drop")
}
