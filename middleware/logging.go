package middleware

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Logging returns a Middleware that writes one record to logger per call
// of the handler it wraps: message "job", then the attributes key and
// attempt from the context's JobInfo (left out when there is none, and the
// key when it is empty),
// duration, outcome ("ok" or "error") and, on failure, error. Records of
// successes are at slog.LevelInfo, of failures at slog.LevelError; the
// handler's context is passed to logger, so slog handlers can add values
// from it.
//
// Outside Retry it logs each job once; inside Retry, each attempt. Its cost
// is two clock reads and the record (nothing but the clock reads when the
// logger's level discards it).
func Logging[T, R any](logger *slog.Logger) (Middleware[T, R], error) {
	if logger == nil {
		return nil, errors.New("middleware: Logging: nil logger")
	}
	return func(next Handler[T, R]) Handler[T, R] {
		return func(ctx context.Context, job T) (R, error) {
			start := time.Now()
			r, err := next(ctx, job)
			logJob(ctx, logger, time.Since(start), err)
			return r, err
		}
	}, nil
}

func logJob(ctx context.Context, logger *slog.Logger, d time.Duration, err error) {
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelError
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 5)
	if info, ok := JobInfoFrom(ctx); ok {
		if info.Key != "" {
			attrs = append(attrs, slog.String("key", info.Key))
		}
		attrs = append(attrs, slog.Int("attempt", info.Attempt))
	}
	attrs = append(attrs, slog.Duration("duration", d))
	if err != nil {
		attrs = append(attrs, slog.String("outcome", "error"), slog.Any("error", err))
	} else {
		attrs = append(attrs, slog.String("outcome", "ok"))
	}
	logger.LogAttrs(ctx, level, "job", attrs...)
}
