// Package limitheader reads what an HTTP service says about its own rate
// limit: the delay its Retry-After asks for, the quotas it announces and
// what is left of them, from the IETF RateLimit fields, their earlier
// drafts, or the X-RateLimit-* headers of GitHub and others.
//
// Parse and ParseHeader read only a response's headers, never its body,
// and are safe for concurrent use (they keep no state). Reading GitHub's
// headers costs under a microsecond and two small allocations; the IETF
// structured fields cost a few microseconds and about thirty allocations,
// in the structured-field parser (BenchmarkParse).
//
// # Families and precedence
//
// Retry-After (RFC 9110) is read whatever else the answer holds, and a
// caller deciding how long to wait should prefer it: the IETF drafts say
// it takes precedence over their fields. The quotas and what is left of
// them come from one family only, the first of these that yields a valid
// value, so that numbers of different meanings are never mixed:
//
//  1. IETF: the RateLimit and RateLimit-Policy fields of
//     draft-ietf-httpapi-ratelimit-headers, structured fields (RFC 9651)
//     read with github.com/dunglas/httpsfv. Drafts -08 to -11 send lists
//     of named items, `RateLimit-Policy: "burst";q=100;w=60,
//     "day";q=1000;w=86400` and `RateLimit: "burst";r=50;t=30`; draft -07
//     a dictionary, `RateLimit: limit=100, remaining=50, reset=30`, with
//     `RateLimit-Policy: 100;w=60`.
//  2. IETFDraft: drafts -00 to -06, `RateLimit-Limit: 100`,
//     `RateLimit-Remaining: 50`, `RateLimit-Reset: 30` (GitLab sends a Unix
//     time there), with `RateLimit-Policy: 100;w=60` (drafts -03 to -06) or
//     the policies in RateLimit-Limit itself, `RateLimit-Limit: 100,
//     100;w=60` (-00 to -02).
//  3. XRateLimit: GitHub's `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
//     `X-RateLimit-Reset` (a Unix time) and `X-RateLimit-Resource`;
//     Discord's `X-RateLimit-Reset-After` (seconds with a fraction), which
//     is preferred to its X-RateLimit-Reset; Envoy's X-RateLimit-Limit in
//     the list form of draft -01, `10, 10;w=1`; and Twitter's
//     `X-Rate-Limit-*`, read where the X-RateLimit-* header of the same
//     meaning is absent or invalid.
//
// A RateLimit-Policy with named items (-08 and later) makes the answer
// IETF even without a RateLimit field; one with integer items (-03 to -07)
// goes with whichever of the first two families the other fields select.
// Names are matched as net/http does, whatever their case; a field split
// over several lines is joined first, as RFC 9651 says.
//
// # Validation and clamping
//
// A malformed value is ignored, never guessed at: a structured field that
// does not parse as RFC 9651 says is ignored whole (the drafts require it),
// and an item in it without the parameters it needs is skipped. Numbers
// outside the headers' syntax are ignored too: a sign, an exponent, a
// unit, a non-digit. What is valid is bounded, so that no header, bogus or
// hostile, yields a negative, overflowing or absurd figure:
//
//   - units (quotas and remaining units) lie in [0, MaxUnits], the range
//     of a structured-field Integer; a longer decimal saturates at
//     MaxUnits;
//   - durations (Retry-After, resets, windows) lie in [0,
//     bucket.MaxDuration]: longer ones are clamped to it, a date or Unix
//     time in the past gives 0, and fractions of a second are rounded up
//     to the nanosecond;
//   - a policy's window is at least a second: w=0, a negative w or a w
//     that is not an Integer invalidates its item;
//   - at most MaxItems policies and MaxItems remaining entries are kept,
//     the first ones.
package limitheader

import (
	"net/http"
	"strconv"
	"time"
)

// MaxUnits is the largest number of units a Policy or a Remaining holds:
// 999,999,999,999,999, the largest structured-field Integer. A plain
// decimal header above it (X-RateLimit-Limit, say) saturates at it.
const MaxUnits = 999_999_999_999_999

// MaxItems is the most policies, and the most remaining entries, one
// Signal holds; a field with more keeps its first MaxItems.
const MaxItems = 16

// A Family is a set of rate-limit headers that belong together.
type Family uint8

// The families, in order of precedence (see the package comment).
const (
	None       Family = iota // no rate-limit header held a valid value
	IETF                     // RateLimit and RateLimit-Policy, drafts -07 to -11
	IETFDraft                // RateLimit-Limit, -Remaining, -Reset, drafts -00 to -06
	XRateLimit               // X-RateLimit-* (GitHub, Discord), X-Rate-Limit-* (Twitter)
)

// String returns the family's name: "none", "ietf", "ietf-draft" or
// "x-ratelimit".
func (f Family) String() string {
	switch f {
	case None:
		return "none"
	case IETF:
		return "ietf"
	case IETFDraft:
		return "ietf-draft"
	case XRateLimit:
		return "x-ratelimit"
	}
	return "family(" + strconv.Itoa(int(f)) + ")"
}

// A Policy is a quota the service announced: at most Quota units in each
// Window.
type Policy struct {
	// Name is the IETF policy's name ("burst" in `"burst";q=100;w=60`),
	// or GitHub's X-RateLimit-Resource ("core", "search"); "" when the
	// headers name none.
	Name string
	// Quota is the units allowed per Window, in [0, MaxUnits].
	Quota int64
	// Window is the time span the quota covers, in [1s,
	// bucket.MaxDuration]; 0 when the headers do not say, as with
	// X-RateLimit-Limit (GitHub's headers give when the current window
	// ends, X-RateLimit-Reset, not how long windows are) or a
	// RateLimit-Limit without a matching RateLimit-Policy.
	Window time.Duration
	// Unit is what Quota counts: the IETF qu parameter, "requests" (also
	// when it is absent, and in every other family), "content-bytes" or
	// "concurrent-requests", or another a service registered.
	Unit string
}

// A Remaining is what the service reported left of a quota: Units that
// may still be spent before Reset.
type Remaining struct {
	// Policy is the name of the IETF policy this belongs to (the item's
	// name in the RateLimit field), GitHub's X-RateLimit-Resource, or ""
	// when the headers name none. In the families other than IETF there
	// is one Remaining, and it belongs to the Signal's first Policy when
	// there is one (the limit the headers report beside it).
	Policy string
	// Units is what is left, in [0, MaxUnits]; valid if HasUnits. 0 means
	// the quota is spent until Reset.
	Units    int64
	HasUnits bool
	// Reset is the time from the answer until the quota's window ends
	// (IETF: the effective window t, within which no more than Units may
	// be spent), in [0, bucket.MaxDuration]; valid if HasReset.
	// RateLimit-Reset, X-RateLimit-Reset and X-Rate-Limit-Reset hold a
	// delay or a time, told apart by magnitude: below 10⁹ (31 years as a
	// delay, 2001 as a Unix time) delay seconds; from 10⁹ Unix seconds
	// (GitHub, GitLab, Twitter, Discord); from 10¹² Unix milliseconds.
	// IETF's t and reset, and X-RateLimit-Reset-After, are always delay
	// seconds.
	Reset    time.Duration
	HasReset bool
}

// A Signal is what one answer said about the service's rate limit. The
// zero value says nothing: no delay, Family None, no policies.
type Signal struct {
	// RetryAfter is the delay the Retry-After header asks for, in [0,
	// bucket.MaxDuration]; valid if HasRetryAfter. It is read whatever
	// the family, and takes precedence over any Reset for a caller
	// deciding how long to wait.
	RetryAfter    time.Duration
	HasRetryAfter bool
	// Family is where Policies and Remaining come from; None when no
	// rate-limit header held a valid value (Retry-After aside).
	Family Family
	// Policies are the quotas the service announced, at most MaxItems.
	// In the families other than IETF, the limit the headers report
	// beside Remaining comes first.
	Policies []Policy
	// Remaining is what is left of the quotas, one entry per quota the
	// answer reported, at most MaxItems: several in the IETF RateLimit
	// field, at most one in the other families.
	Remaining []Remaining
}

// Exhausted reports whether the answer says a quota is spent: some
// Remaining with HasUnits and Units 0.
func (s Signal) Exhausted() bool {
	for _, r := range s.Remaining {
		if r.HasUnits && r.Units == 0 {
			return true
		}
	}
	return false
}

// Parse returns what resp's headers say about the service's rate limit
// (see ParseHeader), measuring dates and Unix times against resp's Date
// header when it holds a valid HTTP date, so that the server's clock is
// compared with the server's clock, and otherwise against the local
// clock. It reads only the headers; the caller still owns resp.Body. A
// nil resp says nothing.
func Parse(resp *http.Response) Signal {
	if resp == nil {
		return Signal{}
	}
	now := time.Now()
	if date, err := http.ParseTime(get(resp.Header, hDate)); err == nil {
		now = date
	}
	return ParseHeader(resp.Header, now)
}

// ParseHeader returns what h says about the service's rate limit,
// measuring dates and Unix times against now. It reads Retry-After and
// then the first family that holds a valid value, in the order and with
// the bounds the package comment gives.
func ParseHeader(h http.Header, now time.Time) Signal {
	var s Signal
	if v := get(h, hRetryAfter); v != "" {
		s.RetryAfter, s.HasRetryAfter = parseRetryAfter(v, now)
	}
	policies, named := parsePolicyField(h)
	switch {
	case parseIETF(h, &s, policies, named):
		s.Family = IETF
	case parseDraft(h, now, &s, policies):
		s.Family = IETFDraft
	case parseXRateLimit(h, now, &s):
		s.Family = XRateLimit
	}
	return s
}

// withLimit returns policies with limit first: the first policy of that
// quota moved to the front if there is one (it gives the limit its
// window), else a new one of unknown window, the last policy dropped if
// there were MaxItems.
func withLimit(policies []Policy, limit int64) []Policy {
	for i, p := range policies {
		if p.Quota == limit {
			copy(policies[1:i+1], policies[:i])
			policies[0] = p
			return policies
		}
	}
	out := make([]Policy, 0, min(len(policies)+1, MaxItems))
	out = append(out, Policy{Quota: limit, Unit: "requests"})
	return append(out, policies[:min(len(policies), MaxItems-1)]...)
}
