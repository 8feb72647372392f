package middleware

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"
)

// Logging returns a Middleware that writes one record to logger per call
// of the handler it wraps: message "job", then the attributes key and
// attempt from the context's JobInfo (left out when there is none, and the
// key when it is empty), duration, outcome ("ok", "error", or "panic" when
// the handler panics, which Logging lets go on after the record) and, on
// failure, error. Records of successes are at slog.LevelInfo, of failures
// at slog.LevelError; the handler's context is passed to logger, so slog
// handlers can add values from it.
//
// Outside Retry it logs each job once, with the attempt Retry made last;
// inside Retry, each attempt. Its cost is two clock reads, a context value
// and the record (nothing but the clock reads and the context value when
// the logger's level discards it).
func Logging[T, R any](logger *slog.Logger) (Middleware[T, R], error) {
	if logger == nil {
		return nil, errors.New("middleware: Logging: nil logger")
	}
	return func(next Handler[T, R]) Handler[T, R] {
		mustHandler("Logging", next)
		return func(ctx context.Context, job T) (r R, err error) {
			rec := &logRecord{}
			if info, ok := JobInfoFrom(ctx); ok {
				rec.attempt.Store(int64(info.Attempt))
			}
			start := time.Now()
			done := false
			defer func() {
				if !done {
					rec.log(ctx, logger, time.Since(start), "panic", nil)
				}
			}()
			r, err = next(context.WithValue(ctx, logRecordKey{}, rec), job)
			done = true
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			rec.log(ctx, logger, time.Since(start), outcome, err)
			return r, err
		}
	}, nil
}

// A logRecord is what Logging learns while the handler runs: the Retry
// right inside it sets the attempt it makes.
type logRecord struct{ attempt atomic.Int64 }

type logRecordKey struct{}

func (rec *logRecord) log(ctx context.Context, logger *slog.Logger, d time.Duration, outcome string, err error) {
	level := slog.LevelInfo
	if outcome != "ok" {
		level = slog.LevelError
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 5)
	info, ok := JobInfoFrom(ctx)
	if ok && info.Key != "" {
		attrs = append(attrs, slog.String("key", info.Key))
	}
	if n := rec.attempt.Load(); n > 0 {
		attrs = append(attrs, slog.Int64("attempt", n))
	}
	attrs = append(attrs, slog.Duration("duration", d), slog.String("outcome", outcome))
	if err != nil {
		attrs = append(attrs, slog.Any("error", err))
	}
	logger.LogAttrs(ctx, level, "job", attrs...)
}
