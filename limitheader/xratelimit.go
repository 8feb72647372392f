package limitheader

import (
	"net/http"
	"strings"
	"time"
)

// parseXRateLimit reads the X-RateLimit-* headers into s, each from the
// first of its names that holds a valid value: the limit from
// X-RateLimit-Limit or X-Rate-Limit-Limit (a number, or a list with
// policies as Envoy sends it, `10, 10;w=1`: see parseLimit); what is left
// from X-RateLimit-Remaining or X-Rate-Limit-Remaining; the reset from
// X-RateLimit-Reset-After (delay seconds, Discord), X-RateLimit-Reset or
// X-Rate-Limit-Reset (by magnitude: delay seconds, Unix seconds or Unix
// milliseconds); and the name from X-RateLimit-Resource (GitHub). It
// reports whether any but the name held a valid value.
func parseXRateLimit(h http.Header, now time.Time, s *Signal) bool {
	var r Remaining
	r.Units, r.HasUnits = firstUnits(h, hXRateLimitRemaining, hXRateLimitRemaining2)
	if v := get(h, hXRateLimitResetAfter); v != "" {
		r.Reset, r.HasReset = parseDelay(v)
	}
	for _, name := range [...]string{hXRateLimitReset, hXRateLimitReset2} {
		if r.HasReset {
			break
		}
		if v := get(h, name); v != "" {
			r.Reset, r.HasReset = parseReset(v, now)
		}
	}
	var policies []Policy
	for _, name := range [...]string{hXRateLimitLimit, hXRateLimitLimit2} {
		if limit, ok, more := parseLimit(h[name], nil); ok {
			policies = withLimit(more, limit)
			break
		}
	}
	if !r.HasUnits && !r.HasReset && len(policies) == 0 {
		return false
	}
	name := strings.TrimSpace(get(h, hXRateLimitResource))
	if r.HasUnits || r.HasReset {
		r.Policy = name
		s.Remaining = append(s.Remaining, r)
	}
	if len(policies) > 0 {
		policies[0].Name = name
		s.Policies = policies
	}
	return true
}

// firstUnits reads units from the first of names that holds a valid
// value.
func firstUnits(h http.Header, names ...string) (int64, bool) {
	for _, name := range names {
		if v := get(h, name); v != "" {
			if n, ok := parseUnits(v); ok {
				return n, true
			}
		}
	}
	return 0, false
}
