package bucket

import (
	"context"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Errors callers branch on. Match them with errors.Is.
var (
	// ErrInvalidLimit matches every *LimitError.
	ErrInvalidLimit = driver.ErrInvalidLimit
	// ErrImpossible matches a request that no wait can ever admit: its
	// cost exceeds the burst or a quota (*CostError), and is returned at once.
	ErrImpossible = driver.ErrImpossible
	// ErrInvalidCost is returned for a cost below 1.
	ErrInvalidCost = driver.ErrInvalidCost
	// ErrEmptyKey is returned for the empty key. Any other string, of any
	// bytes, is a valid key naming its own bucket.
	ErrEmptyKey = driver.ErrEmptyKey
	// ErrClosed is returned by a backend after Close.
	ErrClosed = driver.ErrClosed
	// ErrInvalidFeedback is returned for a Feedback with a field out of
	// range.
	ErrInvalidFeedback = driver.ErrInvalidFeedback
	// ErrNoLearning is returned by Learn when the backend keeps no
	// learned limits.
	ErrNoLearning = driver.ErrNoLearning
)

// A LimitError reports an invalid Limit: its Field ("Rate", "Burst",
// "Quotas[1].Window", ...) and the Reason. It matches ErrInvalidLimit.
type LimitError = driver.LimitError

// A CostError reports a Cost that exceeds what the limit can ever admit:
// Max, the burst or a quota's Max, named by Bound ("burst", "quota
// 1000/1h"). It matches ErrImpossible.
type CostError = driver.CostError

// A WaitError is returned by Wait when the admission would come later than
// the context allows. It matches context.DeadlineExceeded.
type WaitError struct {
	Key   string
	Delay time.Duration // how long the caller would have had to wait
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("bucket: key %q admissible in %v, after the context's deadline", e.Key, e.Delay)
}

// Is reports whether target is context.DeadlineExceeded.
func (e *WaitError) Is(target error) bool { return target == context.DeadlineExceeded }
