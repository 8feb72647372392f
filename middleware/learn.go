package middleware

import (
	"context"
	"math/bits"
	"net/http"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/limitheader"
)

// CheckResponse is FromResponse for a call whose key learns its limit
// (bucket.Limit.WithFloor): it reports what resp's headers say of the
// service's limit (Feedback) to whatever runs the call, through ctx
// (bucket.Report: a dispatcher's handler context, or RateLimit's), on
// every answer, successful or not, and returns the error FromResponse
// would. One thing changes when the call's key learns: a 429 (or an
// exhausted 403) whose headers give no delay has slowed the key's rate
// already, so it asks to be retried at once (a *RetryAfterError of Delay
// 0) rather than after DefaultRetryAfter; the learned rate paces the
// retry. A call whose key does not learn gets FromResponse's error.
//
// Report costs the dispatcher one round trip to its backend per answer
// that says something. CheckResponse reads only the status and headers;
// the caller still owns resp.Body.
func CheckResponse(ctx context.Context, resp *http.Response) error {
	if resp == nil {
		return nil
	}
	sig := limitheader.Parse(resp)
	err, fallback := fromSignal(resp, sig)
	fb := Feedback(sig)
	fb.Throttled = fallback && resp.StatusCode != http.StatusServiceUnavailable
	if fb.IsZero() || !bucket.Report(ctx, fb) || !fb.Throttled {
		return err
	}
	ra := err.(*RetryAfterError)
	return &RetryAfterError{Delay: 0, Err: ra.Err}
}

// MinPaceReset is the shortest reset by which Feedback paces a key's
// remaining units. Headers give resets in whole seconds: one second's
// rounding up of a reset under ten would slow the key by more than 10%.
// A quota with no units left makes the key wait for its reset, however
// short.
const MinPaceReset = 10 * time.Second

// Feedback returns what sig says of the service's limit, for a learned
// limit to follow: the slowest of its policies that count requests and
// give a window, and the slowest pace its remaining units set (the fewest
// units per time left, with resets of at least MinPaceReset; a quota with
// none left makes the key wait for its reset). Throttled is left false:
// whether an answer is a refusal is the status code's to say
// (CheckResponse sets it for a 429 that gives no delay).
func Feedback(sig limitheader.Signal) bucket.Feedback {
	var fb bucket.Feedback
	for _, p := range sig.Policies {
		if p.Window <= 0 || p.Quota <= 0 || p.Unit != "" && p.Unit != "requests" {
			continue
		}
		// Slower: a longer window per unit, Window/Quota.
		if fb.Window == 0 || slower(int64(p.Window), p.Quota, int64(fb.Window), fb.Quota) {
			fb.Quota, fb.Window = p.Quota, p.Window
		}
	}
	for _, r := range sig.Remaining {
		if !r.HasUnits || !r.HasReset || r.Reset <= 0 || r.Units > 0 && r.Reset < MinPaceReset {
			continue
		}
		// Slower: more time per unit left, Reset/Units, none left slowest.
		switch {
		case !fb.HasRemaining, r.Units == 0 && (fb.Remaining > 0 || r.Reset > fb.Reset),
			r.Units > 0 && fb.Remaining > 0 && slower(int64(r.Reset), r.Units, int64(fb.Reset), fb.Remaining):
			fb.Remaining, fb.Reset, fb.HasRemaining = r.Units, r.Reset, true
		}
	}
	return fb
}

// slower reports whether a/b > c/d, for a, c ≥ 0 and b, d > 0, exactly.
func slower(a, b, c, d int64) bool {
	hi1, lo1 := bits.Mul64(uint64(a), uint64(d))
	hi2, lo2 := bits.Mul64(uint64(c), uint64(b))
	return hi1 > hi2 || hi1 == hi2 && lo1 > lo2
}
