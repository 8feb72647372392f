package middleware

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/jobinfo"
)

// Logging returns a Middleware that writes one record to logger per call
// it wraps: message "job", then the attributes key and attempt from the
// context (package jobinfo; left out when there is none, and the key when
// it is empty), duration, outcome ("ok", "error", or "panic" when the
// handler panics, which Logging lets go on after the record) and, on
// failure, error. Records of successes are at slog.LevelInfo, of failures
// at slog.LevelError; the call's context is passed to logger, so slog
// handlers can add values from it.
//
// Outside Retry it logs each job once, with the attempt Retry made last;
// inside Retry, each attempt. Its cost is two clock reads, a context value
// and, when the logger's level lets it through, the record. It panics if
// logger is nil.
func Logging(logger *slog.Logger) Middleware {
	if logger == nil {
		panic("middleware: Logging: nil logger")
	}
	return func(next Next) Next {
		return func(ctx context.Context) (err error) {
			rec := &logRecord{}
			if info, ok := jobinfo.FromContext(ctx); ok {
				rec.attempt.Store(int64(info.Attempt))
			}
			start := time.Now()
			done := false
			defer func() {
				if !done {
					rec.log(ctx, logger, time.Since(start), "panic", nil)
				}
			}()
			err = next(context.WithValue(ctx, logRecordKey{}, rec))
			done = true
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			rec.log(ctx, logger, time.Since(start), outcome, err)
			return err
		}
	}
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
	info, ok := jobinfo.FromContext(ctx)
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
