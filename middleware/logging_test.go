package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/middleware"
)

// capture is a slog.Handler that keeps the records it is given.
type capture struct {
	mu      sync.Mutex
	level   slog.Level
	records []slog.Record
}

func (c *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= c.level }
func (c *capture) WithAttrs([]slog.Attr) slog.Handler           { return c }
func (c *capture) WithGroup(string) slog.Handler                { return c }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records = append(c.records, r)
	return nil
}

// attrs returns the attributes of a record by key.
func attrs(r slog.Record) map[string]slog.Value {
	m := make(map[string]slog.Value)
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value
		return true
	})
	return m
}

// attemptOutcomes returns "attempt:outcome" of each record.
func attemptOutcomes(records []slog.Record) []string {
	var s []string
	for _, r := range records {
		a := attrs(r)
		s = append(s, a["attempt"].String()+":"+a["outcome"].String())
	}
	return s
}

func TestLoggingRecords(t *testing.T) {
	errUpstream := errors.New("upstream 500")
	tests := []struct {
		name      string
		ctx       context.Context
		err       error
		wantLevel slog.Level
		want      map[string]any // attribute values by key; nil: absent
	}{
		{
			name:      "ok under a dispatcher",
			ctx:       jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "tenant-1", Attempt: 2}),
			wantLevel: slog.LevelInfo,
			want:      map[string]any{"key": "tenant-1", "attempt": int64(2), "duration": 3 * time.Second, "outcome": "ok", "error": nil},
		},
		{
			name:      "error under a dispatcher",
			ctx:       jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "tenant-2", Attempt: 1}),
			err:       errUpstream,
			wantLevel: slog.LevelError,
			want:      map[string]any{"key": "tenant-2", "attempt": int64(1), "duration": 3 * time.Second, "outcome": "error", "error": errUpstream},
		},
		{
			name:      "attempt without a key",
			ctx:       jobinfo.NewContext(context.Background(), jobinfo.Info{Attempt: 3}),
			wantLevel: slog.LevelInfo,
			want:      map[string]any{"key": nil, "attempt": int64(3), "outcome": "ok"},
		},
		{
			name:      "no jobinfo",
			ctx:       context.Background(),
			wantLevel: slog.LevelInfo,
			want:      map[string]any{"key": nil, "attempt": nil, "duration": 3 * time.Second, "outcome": "ok"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := new(capture)
				middleware.Wrap(func(ctx context.Context, job int) (int, error) {
					time.Sleep(3 * time.Second)
					return job, tt.err
				}, middleware.Logging(slog.New(c)))(tt.ctx, 1)
				require.Len(t, c.records, 1)
				r := c.records[0]
				assert.Equal(t, "job", r.Message)
				assert.Equal(t, tt.wantLevel, r.Level)
				got := attrs(r)
				for k, want := range tt.want {
					v, ok := got[k]
					if want == nil {
						assert.False(t, ok, "attribute %s = %v, want none", k, v)
					} else if assert.True(t, ok, "attribute %s missing, want %v", k, want) {
						assert.Equal(t, want, v.Any(), "attribute %s", k)
					}
				}
			})
		})
	}
}

// loggingAndRetry returns a Logging writing to the returned capture and a
// Retry that does not sleep.
func loggingAndRetry() (*capture, middleware.Middleware, middleware.Middleware) {
	c := new(capture)
	return c, middleware.Logging(slog.New(c)), middleware.Retry(middleware.WithSleep(noSleep))
}

// TestLoggingAroundAndInsideRetry: inside Retry, Logging logs each
// attempt with its number; outside, the job once.
func TestLoggingAroundAndInsideRetry(t *testing.T) {
	c, logging, retry := loggingAndRetry()
	ctx := jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "k", Attempt: 1})

	middleware.Wrap((&script{errs: []error{errBoom, errBoom}}).handle, retry, logging)(ctx, 0)
	assert.Equal(t, []string{"1:error", "2:error", "3:ok"}, attemptOutcomes(c.records), "Wrap(h, Retry, Logging)")

	// Outside Retry, the one record names the attempt that ended the job,
	// with a jobinfo and without.
	for _, ctx := range []context.Context{ctx, context.Background()} {
		c.records = nil
		middleware.Wrap((&script{errs: []error{errBoom, errBoom}}).handle, logging, retry)(ctx, 0)
		assert.Equal(t, []string{"3:ok"}, attemptOutcomes(c.records), "Wrap(h, Logging, Retry)")
	}
}

// TestLoggingPanic: a handler's panic is logged, then goes on.
func TestLoggingPanic(t *testing.T) {
	c := new(capture)
	h := middleware.Wrap(func(context.Context, int) (int, error) { panic("boom") }, middleware.Logging(slog.New(c)))
	ctx := jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "k", Attempt: 1})
	assert.PanicsWithValue(t, "boom", func() { h(ctx, 0) }, "the handler's panic goes on")
	require.Len(t, c.records, 1)
	r := c.records[0]
	assert.Equal(t, slog.LevelError, r.Level)
	assert.Equal(t, "panic", attrs(r)["outcome"].String())
	assert.Equal(t, "k", attrs(r)["key"].String())
}

func TestLoggingDisabledLevel(t *testing.T) {
	c := &capture{level: slog.LevelWarn}
	h := middleware.Wrap(func(ctx context.Context, job int) (int, error) {
		if job == 0 {
			return 0, errBoom
		}
		return job, nil
	}, middleware.Logging(slog.New(c)))
	h(context.Background(), 1)
	h(context.Background(), 0)
	require.Len(t, c.records, 1, "with the logger at Warn, only the error")
	assert.Equal(t, slog.LevelError, c.records[0].Level)
}

func TestLoggingNil(t *testing.T) {
	assert.PanicsWithValue(t, "middleware: Logging: nil logger", func() { middleware.Logging(nil) })
}

// TestLoggingNestedRetries: under one Logging, the record names the
// attempt of the Retry right inside it, however many Retry calls the
// handler makes below, in parallel (run with -race: they share no state).
func TestLoggingNestedRetries(t *testing.T) {
	c, logging, retry := loggingAndRetry()
	var calls atomic.Int32
	outer := func(ctx context.Context, job int) (int, error) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				middleware.Wrap((&script{errs: []error{errBoom, errBoom}}).handle, retry)(ctx, job)
			})
		}
		wg.Wait()
		if calls.Add(1) == 1 {
			return 0, errBoom
		}
		return job, nil
	}
	middleware.Wrap(outer, logging, retry)(context.Background(), 0)
	require.Len(t, c.records, 1)
	assert.Equal(t, "2", attrs(c.records[0])["attempt"].String(),
		"record's attempt: the outer Retry's; the inner ones made 3 each")
}
