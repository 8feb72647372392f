package limitheader

import (
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
)

// maxSeconds saturates the seconds a header may hold: a larger value is
// clamped to bucket.MaxDuration anyway as a delay, and as Unix
// milliseconds it stays within time.Time's range.
const maxSeconds = 1e15

// parseSeconds reads an unsigned decimal "123" or "123.456", surrounded by
// optional spaces, as whole seconds and nanoseconds, the fraction rounded
// up to the nanosecond. Values above maxSeconds saturate. A sign, an
// exponent or any other byte makes it invalid.
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

// parseUnits reads an unsigned decimal integer, surrounded by optional
// spaces, saturating at MaxUnits.
func parseUnits(v string) (int64, bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n <= MaxUnits {
			n = n*10 + int64(c-'0')
		}
	}
	return min(n, MaxUnits), true
}

// parseDelay reads delay seconds, with an optional fraction.
func parseDelay(v string) (time.Duration, bool) {
	sec, nsec, ok := parseSeconds(v)
	if !ok {
		return 0, false
	}
	return clampDelay(sec, nsec), true
}

// parseReset reads a reset header's value: delay seconds, Unix seconds or
// Unix milliseconds, told apart by magnitude (see Remaining.Reset).
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

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP
// date. Of a list of delays (duplicate headers a proxy folded into one,
// "120, 120") it reads the first; an HTTP date has a comma of its own.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
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

// clampDelay returns sec seconds and nsec nanoseconds, at most
// bucket.MaxDuration.
func clampDelay(sec, nsec int64) time.Duration {
	if sec >= int64(bucket.MaxDuration/time.Second) {
		return bucket.MaxDuration
	}
	return min(time.Duration(sec)*time.Second+time.Duration(nsec), bucket.MaxDuration)
}

// until returns t−now within [0, bucket.MaxDuration].
func until(t, now time.Time) time.Duration {
	return min(max(t.Sub(now), 0), bucket.MaxDuration)
}

// sfSeconds reads a structured-field Integer or Decimal of seconds, as the
// IETF fields' t and reset hold (Decimal is not in the drafts, but costs
// nothing to accept): non-negative, at most bucket.MaxDuration.
func sfSeconds(v any) (time.Duration, bool) {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return 0, false
		}
		return clampDelay(v, 0), true
	case float64:
		// A Decimal has at most three fractional digits: whole
		// milliseconds, exactly, where v*1e9 would not be.
		if !(v >= 0) || math.IsInf(v, 0) {
			return 0, false
		}
		ms := int64(math.Round(v * 1000)) // |v| < 10¹²: fits
		return clampDelay(ms/1000, ms%1000*int64(time.Millisecond)), true
	}
	return 0, false
}

// sfUnits reads a structured-field Integer of units: non-negative (the
// syntax caps it at MaxUnits).
func sfUnits(v any) (int64, bool) {
	n, ok := v.(int64)
	if !ok || n < 0 {
		return 0, false
	}
	return min(n, MaxUnits), true
}
