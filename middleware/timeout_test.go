package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/middleware"
)

func TestTimeoutCancelsTheHandlersContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var cause error
		start := time.Now()
		_, err := middleware.Wrap(func(ctx context.Context, job int) (int, error) {
			<-ctx.Done()
			cause = context.Cause(ctx)
			return 0, fmt.Errorf("fetch %d: %w", job, ctx.Err())
		}, middleware.Timeout(2*time.Second))(context.Background(), 7)
		assert.Equal(t, 2*time.Second, time.Since(start), "the handler's context ended after")
		assert.ErrorIs(t, err, middleware.ErrTimeout)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.EqualError(t, err, "middleware: handler timed out after 2s: fetch 7: context deadline exceeded")
		assert.EqualError(t, cause, "middleware: handler timed out after 2s", "context.Cause")
	})
}

func TestTimeout(t *testing.T) {
	errOther := errors.New("other")
	tests := []struct {
		name        string
		parent      func() (context.Context, context.CancelFunc)
		work        time.Duration // how long the handler takes if its context does not end
		ignoresCtx  bool          // the handler takes work whatever its context does
		result      func(ctx context.Context) error
		wantErr     error // errors.Is
		wantTimeout bool
		wantMsg     string
	}{
		{
			name:    "in time",
			parent:  func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			work:    time.Second,
			result:  func(ctx context.Context) error { return nil },
			wantMsg: "<nil>",
		},
		{
			name:    "fails in time",
			parent:  func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			work:    time.Second,
			result:  func(ctx context.Context) error { return errOther },
			wantErr: errOther,
			wantMsg: "other",
		},
		{
			name:        "returns the bare context error",
			parent:      func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			work:        time.Hour,
			result:      func(ctx context.Context) error { return ctx.Err() },
			wantErr:     context.DeadlineExceeded,
			wantTimeout: true,
			wantMsg:     "middleware: handler timed out after 2s",
		},
		{
			name:        "returns the cause",
			parent:      func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			work:        time.Hour,
			result:      context.Cause,
			wantErr:     context.DeadlineExceeded,
			wantTimeout: true,
			wantMsg:     "middleware: handler timed out after 2s",
		},
		{
			name:       "succeeds late",
			parent:     func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			work:       time.Hour,
			ignoresCtx: true,
			result:     func(ctx context.Context) error { return nil },
			wantMsg:    "<nil>",
		},
		{
			name: "earlier parent deadline",
			parent: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), time.Second)
			},
			work:    time.Hour,
			result:  func(ctx context.Context) error { return ctx.Err() },
			wantErr: context.DeadlineExceeded,
			wantMsg: "context deadline exceeded",
		},
		{
			name: "parent cancelled",
			parent: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(time.Second, cancel)
				return ctx, cancel
			},
			work:    time.Hour,
			result:  func(ctx context.Context) error { return ctx.Err() },
			wantErr: context.Canceled,
			wantMsg: "context canceled",
		},
		{
			name: "outer Timeout fires first",
			parent: func() (context.Context, context.CancelFunc) {
				return context.WithTimeoutCause(context.Background(), time.Second, errors.New("outer"))
			},
			work:    time.Hour,
			result:  func(ctx context.Context) error { return ctx.Err() },
			wantErr: context.DeadlineExceeded,
			wantMsg: "context deadline exceeded",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx, cancel := tt.parent()
				defer cancel()
				_, err := middleware.Wrap(func(ctx context.Context, job int) (int, error) {
					if tt.ignoresCtx {
						time.Sleep(tt.work)
						return 1, tt.result(ctx)
					}
					select {
					case <-time.After(tt.work):
					case <-ctx.Done():
					}
					return 1, tt.result(ctx)
				}, middleware.Timeout(2*time.Second))(ctx, 0)
				if tt.wantErr == nil {
					assert.NoError(t, err)
				} else {
					assert.ErrorIs(t, err, tt.wantErr)
				}
				assert.Equal(t, tt.wantTimeout, errors.Is(err, middleware.ErrTimeout), "errors.Is(%v, ErrTimeout)", err)
				assert.Equal(t, tt.wantMsg, fmt.Sprint(err), "error message")
			})
		})
	}
}

func TestTimeoutInvalid(t *testing.T) {
	assert.PanicsWithValue(t, "middleware: Timeout: duration must be positive, got 0s", func() { middleware.Timeout(0) })
	assert.PanicsWithValue(t, "middleware: Timeout: duration must be positive, got -1s", func() { middleware.Timeout(-time.Second) })
}

// TestTimeoutHTTP: net/http's error already carries the timeout's cause;
// the message says it once, and the error still matches.
func TestTimeoutHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // answers only when the client gives up
	}))
	defer srv.Close()
	_, err := middleware.Wrap(func(ctx context.Context, url string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}, middleware.Timeout(20*time.Millisecond))(context.Background(), srv.URL)
	require.ErrorIs(t, err, middleware.ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, 1, strings.Count(err.Error(), "timed out"), "times the error %q says it timed out", err)
}
