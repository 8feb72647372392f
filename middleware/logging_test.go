package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

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
			ctx:       middleware.WithJobInfo(context.Background(), middleware.JobInfo{Key: "tenant-1", Attempt: 2}),
			wantLevel: slog.LevelInfo,
			want:      map[string]any{"key": "tenant-1", "attempt": int64(2), "duration": 3 * time.Second, "outcome": "ok", "error": nil},
		},
		{
			name:      "error under a dispatcher",
			ctx:       middleware.WithJobInfo(context.Background(), middleware.JobInfo{Key: "tenant-2", Attempt: 1}),
			err:       errUpstream,
			wantLevel: slog.LevelError,
			want:      map[string]any{"key": "tenant-2", "attempt": int64(1), "duration": 3 * time.Second, "outcome": "error", "error": errUpstream},
		},
		{
			name:      "attempt without a key",
			ctx:       middleware.WithJobInfo(context.Background(), middleware.JobInfo{Attempt: 3}),
			wantLevel: slog.LevelInfo,
			want:      map[string]any{"key": nil, "attempt": int64(3), "outcome": "ok"},
		},
		{
			name:      "no JobInfo",
			ctx:       context.Background(),
			wantLevel: slog.LevelInfo,
			want:      map[string]any{"key": nil, "attempt": nil, "duration": 3 * time.Second, "outcome": "ok"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := new(capture)
				logging, err := middleware.Logging[int, int](slog.New(c))
				if err != nil {
					t.Fatal(err)
				}
				logging(func(ctx context.Context, job int) (int, error) {
					time.Sleep(3 * time.Second)
					return job, tt.err
				})(tt.ctx, 1)
				if len(c.records) != 1 {
					t.Fatalf("%d records, want 1", len(c.records))
				}
				r := c.records[0]
				if r.Message != "job" || r.Level != tt.wantLevel {
					t.Errorf("record %q at %v, want \"job\" at %v", r.Message, r.Level, tt.wantLevel)
				}
				got := attrs(r)
				for k, want := range tt.want {
					v, ok := got[k]
					switch {
					case want == nil && ok:
						t.Errorf("attribute %s = %v, want none", k, v)
					case want != nil && !ok:
						t.Errorf("attribute %s missing, want %v", k, want)
					case want != nil && v.Any() != want:
						t.Errorf("attribute %s = %v (%T), want %v", k, v.Any(), v.Any(), want)
					}
				}
			})
		})
	}
}

// loggingAndRetry returns a Logging writing to the returned capture and a
// Retry that does not sleep.
func loggingAndRetry(t *testing.T) (*capture, middleware.Middleware[int, int], middleware.Middleware[int, int]) {
	t.Helper()
	c := new(capture)
	logging, err := middleware.Logging[int, int](slog.New(c))
	if err != nil {
		t.Fatal(err)
	}
	s := new(sleeps)
	retry, err := middleware.Retry[int, int](middleware.WithSleep(s.sleep))
	if err != nil {
		t.Fatal(err)
	}
	return c, logging, retry
}

// TestLoggingAroundAndInsideRetry: inside Retry, Logging logs each
// attempt with its number; outside, the job once.
func TestLoggingAroundAndInsideRetry(t *testing.T) {
	c, logging, retry := loggingAndRetry(t)
	ctx := middleware.WithJobInfo(context.Background(), middleware.JobInfo{Key: "k", Attempt: 1})

	middleware.Chain(retry, logging)((&script{errs: []error{errBoom, errBoom}}).handle)(ctx, 0)
	var got []string
	for _, r := range c.records {
		a := attrs(r)
		got = append(got, a["attempt"].String()+":"+a["outcome"].String())
	}
	if want := "[1:error 2:error 3:ok]"; fmt.Sprint(got) != want {
		t.Errorf("Chain(Retry, Logging) records %v, want %v", got, want)
	}

	// Outside Retry, the one record names the attempt that ended the job,
	// with a JobInfo and without.
	for _, ctx := range []context.Context{ctx, context.Background()} {
		c.records = nil
		middleware.Chain(logging, retry)((&script{errs: []error{errBoom, errBoom}}).handle)(ctx, 0)
		if len(c.records) != 1 {
			t.Fatalf("Chain(Logging, Retry) wrote %d records, want 1", len(c.records))
		}
		a := attrs(c.records[0])
		if got := a["attempt"].String() + ":" + a["outcome"].String(); got != "3:ok" {
			t.Errorf("Chain(Logging, Retry) record attempt:outcome = %s, want 3:ok", got)
		}
	}
}

// TestLoggingPanic: a handler's panic is logged, then goes on.
func TestLoggingPanic(t *testing.T) {
	c := new(capture)
	logging, err := middleware.Logging[int, int](slog.New(c))
	if err != nil {
		t.Fatal(err)
	}
	ctx := middleware.WithJobInfo(context.Background(), middleware.JobInfo{Key: "k", Attempt: 1})
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want the handler's panic", p)
			}
		}()
		logging(func(context.Context, int) (int, error) { panic("boom") })(ctx, 0)
	}()
	if len(c.records) != 1 {
		t.Fatalf("wrote %d records, want 1", len(c.records))
	}
	if r := c.records[0]; r.Level != slog.LevelError || attrs(r)["outcome"].String() != "panic" || attrs(r)["key"].String() != "k" {
		t.Errorf("record %v %v, want level ERROR, outcome panic, key k", r.Level, attrs(r))
	}
}

func TestLoggingDisabledLevel(t *testing.T) {
	c := &capture{level: slog.LevelWarn}
	logging, _ := middleware.Logging[int, int](slog.New(c))
	h := logging(func(ctx context.Context, job int) (int, error) {
		if job == 0 {
			return 0, errBoom
		}
		return job, nil
	})
	h(context.Background(), 1)
	h(context.Background(), 0)
	if len(c.records) != 1 || c.records[0].Level != slog.LevelError {
		t.Errorf("with the logger at Warn: %d records, want only the error", len(c.records))
	}
}

func TestLoggingNil(t *testing.T) {
	if m, err := middleware.Logging[int, int](nil); err == nil || m != nil {
		t.Errorf("Logging(nil) error = %v, want an error", err)
	}
}

// TestLoggingNestedRetries: under one Logging, the record names the
// attempt of the Retry right inside it, however many Retry calls the
// handler makes below, in parallel (run with -race: they share no state).
func TestLoggingNestedRetries(t *testing.T) {
	c, logging, retry := loggingAndRetry(t)
	var calls atomic.Int32
	outer := func(ctx context.Context, job int) (int, error) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				retry((&script{errs: []error{errBoom, errBoom}}).handle)(ctx, job)
			})
		}
		wg.Wait()
		if calls.Add(1) == 1 {
			return 0, errBoom
		}
		return job, nil
	}
	middleware.Chain(logging, retry)(outer)(context.Background(), 0)
	if len(c.records) != 1 {
		t.Fatalf("wrote %d records, want 1", len(c.records))
	}
	if got := attrs(c.records[0])["attempt"].String(); got != "2" {
		t.Errorf("record attempt = %s, want 2 (the outer Retry's; the inner ones made 3 each)", got)
	}
}
