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

	"github.com/leakybucket/leakybucket/middleware"
)

func TestTimeoutCancelsTheHandlersContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		timeout, err := middleware.Timeout[int, int](2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var cause error
		start := time.Now()
		_, err = timeout(func(ctx context.Context, job int) (int, error) {
			<-ctx.Done()
			cause = context.Cause(ctx)
			return 0, fmt.Errorf("fetch %d: %w", job, ctx.Err())
		})(context.Background(), 7)
		if d := time.Since(start); d != 2*time.Second {
			t.Errorf("handler's context ended after %v, want 2s", d)
		}
		for _, target := range []error{middleware.ErrTimeout, context.DeadlineExceeded} {
			if !errors.Is(err, target) {
				t.Errorf("errors.Is(%v, %v) = false, want true", err, target)
			}
		}
		if want := "middleware: handler timed out after 2s: fetch 7: context deadline exceeded"; err.Error() != want {
			t.Errorf("error = %q, want %q", err, want)
		}
		if want := "middleware: handler timed out after 2s"; cause == nil || cause.Error() != want {
			t.Errorf("context.Cause = %v, want %q", cause, want)
		}
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
				timeout, err := middleware.Timeout[int, int](2 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := tt.parent()
				defer cancel()
				_, err = timeout(func(ctx context.Context, job int) (int, error) {
					if tt.ignoresCtx {
						time.Sleep(tt.work)
						return 1, tt.result(ctx)
					}
					select {
					case <-time.After(tt.work):
					case <-ctx.Done():
					}
					return 1, tt.result(ctx)
				})(ctx, 0)
				if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("error = %v, want %v", err, tt.wantErr)
				}
				if got := errors.Is(err, middleware.ErrTimeout); got != tt.wantTimeout {
					t.Errorf("errors.Is(%v, ErrTimeout) = %v, want %v", err, got, tt.wantTimeout)
				}
				if got := fmt.Sprint(err); got != tt.wantMsg {
					t.Errorf("error message = %q, want %q", got, tt.wantMsg)
				}
			})
		})
	}
}

func TestTimeoutInvalid(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second} {
		if m, err := middleware.Timeout[int, int](d); err == nil || m != nil {
			t.Errorf("Timeout(%v) error = %v, want an error", d, err)
		}
	}
}

// TestTimeoutHTTP: net/http's error already carries the timeout's cause;
// the message says it once, and the error still matches.
func TestTimeoutHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // answers only when the client gives up
	}))
	defer srv.Close()
	timeout, err := middleware.Timeout[string, int](20 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	_, err = timeout(func(ctx context.Context, url string) (int, error) {
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
	})(context.Background(), srv.URL)
	for _, target := range []error{middleware.ErrTimeout, context.DeadlineExceeded} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(%v, %v) = false, want true", err, target)
		}
	}
	if n := strings.Count(fmt.Sprint(err), "timed out"); n != 1 {
		t.Errorf("error %q says it timed out %d times, want once", err, n)
	}
}
