package middleware

import (
	"net/http"
	"strconv"
	"strings"
	"time"
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
//   - 403 Forbidden with X-RateLimit-Remaining: 0, as GitHub and others
//     answer an exhausted rate limit: like 429; and a 403 with a valid
//     Retry-After (GitHub's secondary rate limits), with that delay.
//
// Dates and Unix times in the headers are measured against the response's
// Date header when it has a valid one, so the server's clock is compared
// with the server's clock; otherwise against the local clock. FromResponse
// reads only the status and headers; the caller still owns resp.Body and
// must close it.
func FromResponse(resp *http.Response) error {
	if resp == nil {
		return nil
	}
	code, h := resp.StatusCode, resp.Header
	if code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable && code != http.StatusForbidden {
		return nil
	}
	now := time.Now()
	if date, err := http.ParseTime(h.Get("Date")); err == nil {
		now = date
	}
	d, ok := ParseRetryAfter(h, now)
	switch {
	case code == http.StatusTooManyRequests,
		code == http.StatusForbidden && strings.TrimSpace(h.Get("X-RateLimit-Remaining")) == "0":
		if !ok {
			d = DefaultRetryAfter
		}
	case code == http.StatusServiceUnavailable, code == http.StatusForbidden:
		// Only Retry-After makes a 503 or a 403 a request to come back: the
		// other headers come with every answer, whatever its reason.
		if d, ok = parseRetryAfterValue(h.Get("Retry-After"), now); !ok {
			return nil
		}
	default:
		return nil
	}
	return &RetryAfterError{Delay: d, Err: &StatusError{StatusCode: code, Status: resp.Status}}
}

// ParseRetryAfter reads how long h asks the client to wait, measuring
// dates and Unix times against now. It tries these headers in turn and
// answers with the first that holds a valid value:
//
//   - Retry-After (RFC 9110): delay seconds ("120") or an HTTP date
//     ("Wed, 21 Oct 2015 07:28:00 GMT");
//   - RateLimit (IETF draft-ietf-httpapi-ratelimit-headers), a structured
//     list of policies such as `"default";r=0;t=30`: the largest t of the
//     policies with no remaining quota (r=0), or, when none is exhausted,
//     the smallest t; the lines of a field split over several are joined,
//     and the earlier dictionary form "limit=100, remaining=0, reset=30" is
//     read too;
//   - X-RateLimit-Reset-After: delay seconds;
//   - RateLimit-Reset (earlier drafts: delay seconds; GitLab: a Unix
//     time), X-RateLimit-Reset and X-Rate-Limit-Reset: a delta or a Unix
//     time, told apart by magnitude: below 10⁹ (2001-09-09 as a Unix time,
//     31 years as a delta) delay seconds; from 10⁹ to below 10¹² Unix
//     seconds (GitHub, GitLab, Twitter, Discord); from 10¹² Unix
//     milliseconds.
//
// The reset headers (all but Retry-After and RateLimit) count only when no
// X-RateLimit-Remaining, RateLimit-Remaining or X-Rate-Limit-Remaining
// header reports units left: when some are left they say when a window
// with room resets, not when to come back.
//
// Numbers are unsigned decimals and may have a fraction ("1.5", as Discord
// sends), which is rounded up to the nanosecond; anything else, including a
// sign, makes that header invalid and the next one is tried. A date or
// Unix time in the past gives 0; a delay beyond MaxRetryAfter is clamped to
// it. The result is never negative. ok is false when no header holds a
// valid value.
func ParseRetryAfter(h http.Header, now time.Time) (d time.Duration, ok bool) {
	if v := h.Get("Retry-After"); v != "" {
		if d, ok := parseRetryAfterValue(v, now); ok {
			return d, true
		}
	}
	// A structured field may be split over several lines.
	if vs := h.Values("RateLimit"); len(vs) > 0 {
		if d, ok := parseRateLimitField(strings.Join(vs, ",")); ok {
			return d, true
		}
	}
	if unitsLeft(h) {
		return 0, false
	}
	if v := h.Get("X-RateLimit-Reset-After"); v != "" {
		if d, ok := parseDelay(v); ok {
			return d, true
		}
	}
	for _, name := range []string{"RateLimit-Reset", "X-RateLimit-Reset", "X-Rate-Limit-Reset"} {
		if v := h.Get(name); v != "" {
			if d, ok := parseReset(v, now); ok {
				return d, true
			}
		}
	}
	return 0, false
}

// unitsLeft reports whether a remaining-units header of h holds a number
// above zero.
func unitsLeft(h http.Header) bool {
	for _, name := range []string{"X-RateLimit-Remaining", "RateLimit-Remaining", "X-Rate-Limit-Remaining"} {
		if n, err := strconv.ParseUint(strings.TrimSpace(h.Get(name)), 10, 64); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// parseRetryAfterValue reads delay seconds or an HTTP date. Of a list of
// delays (duplicate headers a proxy folded into one, "120, 120") it reads
// the first; an HTTP date has a comma of its own.
func parseRetryAfterValue(v string, now time.Time) (time.Duration, bool) {
	if first, _, found := strings.Cut(v, ","); found {
		if d, ok := parseDelay(first); ok {
			return d, true
		}
	}
	if d, ok := parseDelay(v); ok {
		return d, true
	}
	t, err := http.ParseTime(strings.TrimSpace(v))
	if err != nil {
		return 0, false
	}
	return until(t, now), true
}

// parseReset reads an X-RateLimit-Reset value: delay seconds, Unix seconds
// or Unix milliseconds, by magnitude.
func parseReset(v string, now time.Time) (time.Duration, bool) {
	sec, nsec, ok := parseSeconds(v)
	switch {
	case !ok:
		return 0, false
	case sec < 1e9:
		return clampDelay(sec, nsec), true
	case sec < 1e12:
		return until(time.Unix(sec, nsec), now), true
	default:
		// Milliseconds: the fraction is below a millisecond; round it up.
		ms := sec
		if nsec > 0 {
			ms++
		}
		return until(time.UnixMilli(ms), now), true
	}
}

// parseDelay reads delay seconds.
func parseDelay(v string) (time.Duration, bool) {
	sec, nsec, ok := parseSeconds(v)
	if !ok {
		return 0, false
	}
	return clampDelay(sec, nsec), true
}

// maxSeconds saturates parsed numbers: every reading of a larger value is
// clamped to MaxRetryAfter anyway, and it keeps Unix milliseconds within
// time.Time's range.
const maxSeconds = 1e15

// parseSeconds reads an unsigned decimal "123" or "123.456", surrounded by
// optional spaces, as whole seconds and nanoseconds, the fraction rounded up
// to the nanosecond. Values above maxSeconds saturate.
func parseSeconds(v string) (sec, nsec int64, ok bool) {
	v = strings.Trim(v, " \t")
	whole, frac, dot := strings.Cut(v, ".")
	if whole == "" || (dot && frac == "") {
		return 0, 0, false
	}
	for i := 0; i < len(whole); i++ {
		c := whole[i]
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		if sec < maxSeconds {
			sec = sec*10 + int64(c-'0')
		}
	}
	sec = min(sec, maxSeconds)
	var scale int64 = 1e8
	for i := 0; i < len(frac); i++ {
		c := frac[i]
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		switch {
		case scale > 0:
			nsec += int64(c-'0') * scale
			scale /= 10
		case c != '0' && scale == 0:
			nsec++ // round the rest up
			scale = -1
		}
	}
	if nsec == 1e9 {
		sec, nsec = sec+1, 0
	}
	return sec, nsec, true
}

// clampDelay returns sec seconds and nsec nanoseconds, at most
// MaxRetryAfter.
func clampDelay(sec, nsec int64) time.Duration {
	if sec >= int64(MaxRetryAfter/time.Second) {
		return MaxRetryAfter
	}
	return min(time.Duration(sec)*time.Second+time.Duration(nsec), MaxRetryAfter)
}

// until returns t−now within [0, MaxRetryAfter].
func until(t, now time.Time) time.Duration {
	return min(max(t.Sub(now), 0), MaxRetryAfter)
}

// parseRateLimitField reads the RateLimit header: a structured-field list
// of policies with parameters r (remaining) and t (seconds until reset),
// `"burst";r=0;t=1, "daily";r=10;t=3600`, or the earlier dictionary
// `limit=100, remaining=0, reset=30`. It is lenient about the syntax it
// does not need, and strict about the numbers it reads.
func parseRateLimitField(v string) (time.Duration, bool) {
	var (
		exhausted, other time.Duration
		haveExhausted    bool
		haveOther        bool
		// the dictionary form spreads one policy over several members
		dictReset     time.Duration
		dictHaveReset bool
		dictRemaining = -1
	)
	for _, member := range splitOutsideQuotes(v, ',') {
		parts := splitOutsideQuotes(member, ';')
		item := strings.TrimSpace(parts[0])
		if name, val, ok := strings.Cut(item, "="); ok && !strings.HasPrefix(item, `"`) {
			switch strings.TrimSpace(name) {
			case "reset":
				if d, ok := parseDelay(val); ok {
					dictReset, dictHaveReset = d, true
				}
			case "remaining":
				if sec, nsec, ok := parseSeconds(val); ok && nsec == 0 {
					dictRemaining = int(min(sec, 1<<30))
				}
			}
			continue
		}
		var (
			t, haveT  = time.Duration(0), false
			remaining = -1
		)
		for _, p := range parts[1:] {
			name, val, _ := strings.Cut(p, "=")
			switch strings.TrimSpace(name) {
			case "t":
				t, haveT = parseDelay(val)
			case "r":
				if sec, nsec, ok := parseSeconds(val); ok && nsec == 0 {
					remaining = int(min(sec, 1<<30))
				}
			}
		}
		if !haveT {
			continue
		}
		if remaining == 0 {
			exhausted, haveExhausted = max(exhausted, t), true
		} else if !haveOther || t < other {
			other, haveOther = t, true
		}
	}
	if dictHaveReset {
		if dictRemaining == 0 {
			exhausted, haveExhausted = max(exhausted, dictReset), true
		} else if !haveOther || dictReset < other {
			other, haveOther = dictReset, true
		}
	}
	switch {
	case haveExhausted:
		return exhausted, true
	case haveOther:
		return other, true
	}
	return 0, false
}

// splitOutsideQuotes splits s at each sep that is not inside a
// double-quoted string (where a backslash escapes the next byte).
func splitOutsideQuotes(s string, sep byte) []string {
	var parts []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}
