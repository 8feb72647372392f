package bucket

import (
	"context"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A Feedback is what a service's answer said about its own limit for a
// key, for a learned limit (Limit.WithFloor) to follow. Package
// middleware builds one from an HTTP response's headers; the zero
// Feedback says nothing.
//
// How each part is learned, for every process sharing the backend:
//
//   - an announced policy, Quota units per Window, becomes the key's rate
//     (paced evenly) until it expires, a minute after it was last said;
//   - Remaining units before Reset pace the key so that it spends at most
//     those before the reset; none remaining pauses it until the reset;
//   - a throttle that said nothing else lowers the key's rate to 0.7
//     times itself, and the rate climbs back along a cubic, as TCP CUBIC
//     and the AWS SDK's adaptive retry mode do: in about 2 s for a key of
//     10/s, 9 s for one of 1,000/s. Processes that see one overload drop
//     once: a throttle of an admission decided before the last drop
//     drops nothing again.
//
// A key's rate never goes above its limit's own, the ceiling, nor below
// its floor.
type Feedback struct {
	// Throttled reports a refusal for rate (an HTTP 429) that said
	// nothing of the limit or of when to come back.
	Throttled bool
	// Quota units per Window: the policy the service announced, the
	// slowest if several (Window 0: none).
	Quota  int64
	Window time.Duration
	// Remaining units are left before Reset, if HasRemaining.
	Remaining    int64
	Reset        time.Duration
	HasRemaining bool
}

// IsZero reports whether fb says nothing.
func (fb Feedback) IsZero() bool { return fb == Feedback{} }

// Driver returns fb as a backend's Learn takes it, for the admission
// whose booking had generation gen (driver.Booking.Gen; 0 if unknown), or
// an error matching ErrInvalidFeedback. A dispatcher calls it.
func (fb Feedback) Driver(gen int64) (driver.Feedback, error) {
	d := driver.Feedback{Throttled: fb.Throttled, Gen: gen, Remaining: fb.Remaining, Reset: fb.Reset, HasRemaining: fb.HasRemaining}
	switch {
	case fb.Window < 0 || fb.Window > MaxDuration || fb.Quota < 0 || fb.Window > 0 && fb.Quota == 0:
		return d, fmt.Errorf("%w: policy %d per %v", ErrInvalidFeedback, fb.Quota, fb.Window)
	case fb.Window > 0:
		d.Interval = (fb.Window + time.Duration(fb.Quota) - 1) / time.Duration(fb.Quota)
	}
	return d, d.Validate()
}

// Learn tells key's bucket what the service said of its limit, in every
// process sharing the backend, and returns the emission interval the
// key's admissions apply from now: its limit's own, or slower. For a key
// whose limit is fixed (no floor) it changes nothing. A backend that keeps
// no learned limits returns ErrNoLearning. A throttle reported here drops
// the rate each time: a Dispatcher, which knows which admission each
// answer is for, drops once per overload.
func (l *Limiter) Learn(ctx context.Context, key string, fb Feedback) (time.Duration, error) {
	if key == "" {
		return 0, ErrEmptyKey
	}
	lim := l.Limit(key)
	if lim.IsUnlimited() {
		return 0, nil
	}
	dfb, err := fb.Driver(0)
	if err != nil {
		return 0, err
	}
	lb, ok := l.backend.(driver.LearnBackend)
	if !ok {
		return 0, ErrNoLearning
	}
	return lb.Learn(ctx, key, lim.driver(), dfb)
}

// A Reporter takes what a service said of its limit in answer to the call
// it runs: a Dispatcher's handler contexts carry one, so that a handler,
// or middleware.CheckResponse, reports with Report.
type Reporter interface {
	// Report learns fb for the call's key and reports whether the key's
	// limit learns from it (a learned limit, on a backend that keeps
	// them).
	Report(ctx context.Context, fb Feedback) bool
}

// ReporterKey is the key a context carries a Reporter under. A context
// type may answer it in its Value method without storing a value (a
// dispatcher's handler contexts do); everyone else uses
// NewReporterContext.
type ReporterKey struct{}

// NewReporterContext returns a copy of ctx that carries r.
func NewReporterContext(ctx context.Context, r Reporter) context.Context {
	return context.WithValue(ctx, ReporterKey{}, r)
}

// Report hands fb to the Reporter ctx carries, and reports whether the
// call's key learns from it: false if ctx carries none.
func Report(ctx context.Context, fb Feedback) bool {
	r, ok := ctx.Value(ReporterKey{}).(Reporter)
	return ok && r.Report(ctx, fb)
}
