package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrTimeout matches the errors of a handler stopped by Timeout. They also
// match context.DeadlineExceeded.
var ErrTimeout = errors.New("middleware: handler timed out")

// Timeout returns a Middleware that ends the handler's context d after the
// handler starts; d > 0. The context's cause (context.Cause) then says that
// the handler timed out. If the handler fails after its time ran out, its
// error is wrapped in one that says so and matches ErrTimeout and
// context.DeadlineExceeded, unless it wraps the cause already (as the
// errors of net/http do). An earlier deadline or cancellation of the
// caller's context is passed through unchanged.
//
// Timeout does not abandon a handler that ignores its context: it returns
// when the handler does, with the handler's result and error if it
// succeeded late. It starts no goroutine. Each call costs a context and a
// timer. It panics if d ≤ 0.
func Timeout(d time.Duration) Middleware {
	if d <= 0 {
		panic(fmt.Sprintf("middleware: Timeout: duration must be positive, got %v", d))
	}
	return func(next Next) Next {
		return func(ctx context.Context) error {
			cause := &timeoutError{d: d}
			tctx, cancel := context.WithTimeoutCause(ctx, d, cause)
			defer cancel()
			err := next(tctx)
			// An error that wraps the cause already says so (net/http's
			// errors do); any other is wrapped in one that does.
			if err != nil && context.Cause(tctx) == cause && !errors.Is(err, cause) {
				err = &timeoutError{d: d, err: err}
			}
			return err
		}
	}
}

// timeoutError is both the cause of a timed-out context and, with err set,
// the error of the handler it stopped.
type timeoutError struct {
	d   time.Duration
	err error
}

func (e *timeoutError) Error() string {
	msg := "middleware: handler timed out after " + e.d.String()
	if _, cause := e.err.(*timeoutError); e.err != nil && e.err != context.DeadlineExceeded && !cause {
		msg += ": " + e.err.Error()
	}
	return msg
}

func (e *timeoutError) Unwrap() error { return e.err }

func (e *timeoutError) Is(target error) bool {
	return target == ErrTimeout || target == context.DeadlineExceeded
}
