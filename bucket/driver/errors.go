package driver

import (
	"errors"
	"fmt"
)

// The errors of invalid requests and closed backends. Package bucket
// gives them to users under the same names; match them with errors.Is.
var (
	// ErrInvalidLimit matches every *LimitError.
	ErrInvalidLimit = errors.New("bucket: invalid limit")
	// ErrImpossible matches a request that no wait can ever admit: its
	// cost exceeds the burst or a quota (*CostError), and is returned at once.
	ErrImpossible = errors.New("bucket: request can never be admitted")
	// ErrInvalidCost is returned for a cost below 1.
	ErrInvalidCost = errors.New("bucket: cost must be at least 1")
	// ErrEmptyKey is returned for the empty key. Any other string, of any
	// bytes, is a valid key naming its own bucket.
	ErrEmptyKey = errors.New("bucket: empty key")
	// ErrClosed is returned by a backend after Close.
	ErrClosed = errors.New("bucket: backend closed")
	// ErrNoLease is returned for a request of a capped limit
	// (Limit.Inflight) that names no lease.
	ErrNoLease = errors.New("bucket: a limit with an inflight cap needs a lease ID")
	// ErrInvalidLeaseTTL is returned for a lease time to live out of
	// range.
	ErrInvalidLeaseTTL = errors.New("bucket: invalid lease TTL")
	// ErrNoLeases is returned by a backend that keeps no leases (not a
	// LeaseBackend) for a request of a capped limit.
	ErrNoLeases = errors.New("bucket: backend keeps no leases: it cannot apply an inflight cap")
	// ErrInvalidFeedback is returned for a Feedback with a field out of
	// range.
	ErrInvalidFeedback = errors.New("bucket: invalid feedback")
	// ErrNoLearning is returned by Learn on a backend that keeps no
	// learned limits (not a LearnBackend).
	ErrNoLearning = errors.New("bucket: backend keeps no learned limits")
)

// A LimitError reports an invalid Limit, naming the field.
type LimitError struct {
	Field  string // "Rate", "Burst", "Quotas[1].Window", ...
	Reason string
}

func (e *LimitError) Error() string {
	return "bucket: invalid limit: " + e.Field + " " + e.Reason
}

// Is reports whether target is ErrInvalidLimit.
func (e *LimitError) Is(target error) bool { return target == ErrInvalidLimit }

// A CostError reports a cost that exceeds what the limit can ever admit.
type CostError struct {
	Cost  int64
	Max   int64  // the burst or the quota's Max
	Bound string // "burst" or the quota, e.g. "quota 1000/1h"
}

func (e *CostError) Error() string {
	return fmt.Sprintf("bucket: cost %d exceeds %s %d", e.Cost, e.Bound, e.Max)
}

// Is reports whether target is ErrImpossible.
func (e *CostError) Is(target error) bool { return target == ErrImpossible }
