package limitheader_test

import (
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/limitheader"
)

// TestXRateLimit reads the X-RateLimit-* headers, with the values GitHub,
// Discord, Twitter and Envoy document.
func TestXRateLimit(t *testing.T) {
	runSignalTests(t, []signalTest{
		// GitHub's announcement of X-RateLimit-Reset (2013).
		{"GitHub", headers("X-RateLimit-Limit", "60", "X-RateLimit-Remaining", "42", "X-RateLimit-Reset", "1372700873"), githubNow,
			xratelimit(ps(policy("", 60, 0)), remaining("", 42, 873*sec))},
		// GitHub's answer to an exhausted limit, measured against its Date.
		{"GitHub exhausted", headers("X-RateLimit-Limit", "60", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "1377013266"),
			time.Date(2013, 8, 20, 14, 50, 41, 0, time.UTC),
			xratelimit(ps(policy("", 60, 0)), remaining("", 0, 50*time.Minute+25*sec))},
		// GitHub's REST documentation today, lower-case as HTTP/2 sends it.
		{"GitHub with its resource", headers("x-ratelimit-limit", "5000", "x-ratelimit-remaining", "4999",
			"x-ratelimit-used", "1", "x-ratelimit-reset", "1691591363", "x-ratelimit-resource", "core"), time.Unix(1691591363-3600, 0),
			xratelimit(ps(policy("core", 5000, 0)), remaining("core", 4999, time.Hour))},
		// Discord's documented headers, and its fractions.
		{"Discord", headers("X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "1470173023",
			"X-RateLimit-Reset-After", "1", "X-RateLimit-Bucket", "abcd1234"), time.Unix(1470173022, 0),
			xratelimit(ps(policy("", 5, 0)), remaining("", 0, sec))},
		{"Discord reset-after wins", headers("X-RateLimit-Reset-After", "64.57", "X-RateLimit-Reset", "1470173023.123"), time.Unix(1470173000, 0),
			xratelimit(nil, reset(64570*time.Millisecond))},
		{"Discord reset with a fraction", headers("X-RateLimit-Reset", "1470173023.123"), time.Unix(1470173022, 0),
			xratelimit(nil, reset(1123*time.Millisecond))},
		{"bad reset-after falls to reset", headers("X-RateLimit-Reset-After", "soon", "X-RateLimit-Reset", "30"), tableNow,
			xratelimit(nil, reset(30*sec))},
		// Twitter's spelling.
		{"Twitter", headers("x-rate-limit-limit", "900", "x-rate-limit-remaining", "847", "x-rate-limit-reset", "1372700900"), githubNow,
			xratelimit(ps(policy("", 900, 0)), remaining("", 847, 900*sec))},
		{"X-RateLimit first, X-Rate-Limit where it is invalid", headers(
			"X-RateLimit-Limit", "x", "X-Rate-Limit-Limit", "900",
			"X-RateLimit-Remaining", "5", "X-Rate-Limit-Remaining", "6",
			"X-RateLimit-Reset", "-1", "X-Rate-Limit-Reset", "60"), tableNow,
			xratelimit(ps(policy("", 900, 0)), remaining("", 5, time.Minute))},
		// Envoy's rate-limit filter sends the draft -01 list, with windows.
		{"Envoy", headers("x-ratelimit-limit", "10, 10;w=1", "x-ratelimit-remaining", "9", "x-ratelimit-reset", "1"), tableNow,
			xratelimit(ps(policy("", 10, sec)), remaining("", 9, sec))},
		{"Envoy with two descriptors", headers("x-ratelimit-limit", "10, 100;w=60, 10;w=1", "x-ratelimit-remaining", "2"), tableNow,
			xratelimit(ps(policy("", 10, sec), policy("", 100, time.Minute)), units(2))},
		{"limit alone", headers("X-RateLimit-Limit", "60"), tableNow, xratelimit(ps(policy("", 60, 0)))},
		{"remaining alone", headers("X-RateLimit-Remaining", "0"), tableNow, xratelimit(nil, units(0))},
		{"reset in Unix milliseconds", headers("X-RateLimit-Reset", "1372700873000"), githubNow, xratelimit(nil, reset(873*sec))},
		{"reset as a delay", headers("X-RateLimit-Reset", "60"), tableNow, xratelimit(nil, reset(time.Minute))},
		{"reset in the past", headers("X-RateLimit-Reset", "1372699000"), githubNow, xratelimit(nil, reset(0))},
		{"resource alone", headers("X-RateLimit-Resource", "core"), tableNow, limitheader.Signal{}},

		// Malformed values are ignored.
		{"garbage", headers("X-RateLimit-Limit", "lots", "X-RateLimit-Remaining", "some", "X-RateLimit-Reset", "tomorrow"), tableNow, limitheader.Signal{}},
		{"signs", headers("X-RateLimit-Limit", "+60", "X-RateLimit-Remaining", "-1", "X-RateLimit-Reset-After", "-5"), tableNow, limitheader.Signal{}},
		{"units with a fraction", headers("X-RateLimit-Remaining", "1.5"), tableNow, limitheader.Signal{}},
		{"exponent", headers("X-RateLimit-Reset", "1e9"), tableNow, limitheader.Signal{}},

		// Bounds
		{"huge", headers("X-RateLimit-Limit", "99999999999999999999999", "X-RateLimit-Remaining", "1000000000000000",
			"X-RateLimit-Reset", "999999999"), tableNow,
			xratelimit(ps(policy("", limitheader.MaxUnits, 0)), remaining("", limitheader.MaxUnits, bucket.MaxDuration))},
		{"Unix time far ahead", headers("X-RateLimit-Reset", "99999999999"), githubNow, xratelimit(nil, reset(bucket.MaxDuration))},
		{"Unix milliseconds far ahead", headers("X-RateLimit-Reset", "99999999999999999999"), githubNow, xratelimit(nil, reset(bucket.MaxDuration))},
	})
}
