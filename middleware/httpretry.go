package middleware

import (
	"net/http"
	"strconv"
	"time"

	"github.com/leakybucket/leakybucket/limitheader"
)

// DefaultRetryAfter is the delay FromResponse asks for on a 429 (or a 403
// that reports an exhausted rate limit) whose headers give none it can
// read.
const DefaultRetryAfter = time.Second

// MaxRetryAfter is the longest delay ParseRetryAfter reports: a header that
// asks for longer (a bogus value, a far-off date, a monthly quota) is
// clamped to it. A key paused for a day and asked again is safe; a delay
// that outlives the process is not useful.
const MaxRetryAfter = 24 * time.Hour

// A StatusError is the error inside the *RetryAfterError FromResponse
// returns: the HTTP status that asked for the retry.
type StatusError struct {
	StatusCode int    // 429, 503 or 403
	Status     string // the response's status line, e.g. "429 Too Many Requests"
}

// Error returns "middleware: HTTP " and the status line.
func (e *StatusError) Error() string {
	status := e.Status
	if status == "" {
		status = strconv.Itoa(e.StatusCode) + " " + http.StatusText(e.StatusCode)
	}
	return "middleware: HTTP " + status
}

// FromResponse returns a *RetryAfterError, wrapping a *StatusError, when
// resp asks the client to come back later, and nil otherwise:
//
//   - 429 Too Many Requests: always; the delay is what ParseRetryAfter
//     reads, or DefaultRetryAfter when no header gives one;
//   - 503 Service Unavailable: when it has a valid Retry-After, with that
//     delay (a 503 without one is an ordinary failure, left to the caller;
//     the rate-limit headers some servers send with every answer say
//     nothing of when an unavailable service is back);
//   - 403 Forbidden whose rate-limit headers report a quota with no units
//     left (X-RateLimit-Remaining: 0, as GitHub and others answer an
//     exhausted rate limit, or the same in the IETF fields): like 429; and
//     a 403 with a valid Retry-After (GitHub's secondary rate limits),
//     with that delay.
//
// Dates and Unix times in the headers are measured against the response's
// Date header when it has a valid one, so the server's clock is compared
// with the server's clock; otherwise against the local clock. FromResponse
// reads only the status and headers, with limitheader.Parse; the caller
// still owns resp.Body and must close it.
func FromResponse(resp *http.Response) error {
	if resp == nil {
		return nil
	}
	err, _ := fromSignal(resp, limitheader.Parse(resp))
	return err
}

// fromSignal is FromResponse on resp's headers read into sig. It reports
// too whether the delay is DefaultRetryAfter, for want of one in the
// headers.
func fromSignal(resp *http.Response, sig limitheader.Signal) (error, bool) {
	code := resp.StatusCode
	if code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable && code != http.StatusForbidden {
		return nil, false
	}
	d, ok := retryAfter(sig)
	switch {
	case code == http.StatusTooManyRequests, code == http.StatusForbidden && sig.Exhausted():
		if !ok {
			d = DefaultRetryAfter
		}
	case sig.HasRetryAfter:
		// Only Retry-After makes a 503 or a 403 a request to come back: the
		// other headers come with every answer, whatever its reason.
		d = min(sig.RetryAfter, MaxRetryAfter)
		ok = true
	default:
		return nil, false
	}
	return &RetryAfterError{Delay: d, Err: &StatusError{StatusCode: code, Status: resp.Status}}, !ok
}

// ParseRetryAfter reads how long h asks the client to wait, measuring
// dates and Unix times against now. It reads h with
// limitheader.ParseHeader and answers with the first of these that holds a
// valid value:
//
//   - Retry-After (RFC 9110): delay seconds ("120") or an HTTP date
//     ("Wed, 21 Oct 2015 07:28:00 GMT");
//   - the IETF RateLimit field (draft-ietf-httpapi-ratelimit-headers), a
//     structured list of policies such as `"default";r=0;t=30`: the
//     largest t of the policies with no remaining quota (r=0), or, when
//     none is exhausted, the smallest t; the lines of a field split over
//     several are joined, and the earlier dictionary form "limit=100,
//     remaining=0, reset=30" is read too;
//   - the earlier drafts' RateLimit-Reset (delay seconds; GitLab: a Unix
//     time);
//   - X-RateLimit-Reset-After (delay seconds, Discord), else
//     X-RateLimit-Reset, else X-Rate-Limit-Reset.
//
// RateLimit-Reset, X-RateLimit-Reset and X-Rate-Limit-Reset hold a delta
// or a Unix time, told apart by magnitude: below 10⁹ (2001-09-09 as a Unix
// time, 31 years as a delta) delay seconds; from 10⁹ to below 10¹² Unix
// seconds (GitHub, GitLab, Twitter, Discord); from 10¹² Unix milliseconds.
// These resets count only when their family's remaining-units header
// (RateLimit-Remaining; X-RateLimit-Remaining, else
// X-Rate-Limit-Remaining) does not report units left: when some are left
// they say when a window with room resets, not when to come back. Of the
// last three items only the first family with a valid value is read
// (limitheader's precedence), so that a reset is never paired with
// another family's remaining units.
//
// Numbers are unsigned decimals and may have a fraction ("1.5", as Discord
// sends), which is rounded up to the nanosecond; anything else, including a
// sign, makes that header invalid and the next one is tried; a structured
// field that does not parse as RFC 9651 says is ignored whole. A date or
// Unix time in the past gives 0; a delay beyond MaxRetryAfter is clamped to
// it. The result is never negative. ok is false when no header holds a
// valid value.
func ParseRetryAfter(h http.Header, now time.Time) (d time.Duration, ok bool) {
	return retryAfter(limitheader.ParseHeader(h, now))
}

// retryAfter returns the delay sig asks for, as ParseRetryAfter describes
// it, at most MaxRetryAfter.
func retryAfter(sig limitheader.Signal) (time.Duration, bool) {
	if sig.HasRetryAfter {
		return min(sig.RetryAfter, MaxRetryAfter), true
	}
	var (
		exhausted, other         time.Duration
		haveExhausted, haveOther bool
	)
	for _, r := range sig.Remaining {
		switch {
		case !r.HasReset:
		case r.HasUnits && r.Units == 0:
			exhausted, haveExhausted = max(exhausted, r.Reset), true
		case sig.Family != limitheader.IETF && r.HasUnits:
			// Units left: the reset of a window with room.
		case !haveOther || r.Reset < other:
			other, haveOther = r.Reset, true
		}
	}
	switch {
	case haveExhausted:
		return min(exhausted, MaxRetryAfter), true
	case haveOther:
		return min(other, MaxRetryAfter), true
	}
	return 0, false
}
