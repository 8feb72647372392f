package dispatcher

import (
	"errors"
	"fmt"
)

// Errors callers branch on. Match them with errors.Is.
var (
	// ErrClosed resolves jobs that a hard stop left unstarted, and is
	// returned by Submit and TrySubmit after Shutdown or Close began.
	ErrClosed = errors.New("dispatcher: closed")
	// ErrQueueFull is returned by TrySubmit when the queue has no room.
	ErrQueueFull = errors.New("dispatcher: queue full")
	// ErrPending is returned by Future.Result before the job is resolved.
	ErrPending = errors.New("dispatcher: job not resolved yet")
	// ErrTooManyRequeues wraps the last error of a job whose handler asked
	// to be retried after a delay more often than WithMaxRequeues allows.
	ErrTooManyRequeues = errors.New("dispatcher: too many requeues")
)

// A PanicError is the error of a job whose handler panicked. The worker
// that ran it lives on.
type PanicError struct {
	Value any    // what the handler panicked with
	Stack []byte // the goroutine's stack at the panic
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("dispatcher: handler panicked: %v\n%s", e.Value, e.Stack)
}

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
