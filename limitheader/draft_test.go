package limitheader_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/limitheader"
)

// TestIETFDraft reads the RateLimit-Limit, -Remaining and -Reset fields of
// drafts -00 to -06, with the drafts' examples and GitLab's.
func TestIETFDraft(t *testing.T) {
	// MaxItems policies and a limit of none of them: the limit first, the
	// last policy dropped.
	var full []string
	bounded := ps(policy("", 1000, 0))
	for i := range limitheader.MaxItems {
		full = append(full, strconv.Itoa(i+1)+";w=1")
		if i < limitheader.MaxItems-1 {
			bounded = append(bounded, policy("", int64(i+1), time.Second))
		}
	}
	runSignalTests(t, []signalTest{
		{"-06 fields", headers("RateLimit-Limit", "100", "RateLimit-Remaining", "50", "RateLimit-Reset", "50"), tableNow,
			draft(ps(policy("", 100, 0)), remaining("", 50, 50*sec))},
		{"-06 with its policy", headers("RateLimit-Policy", "100;w=10", "RateLimit-Limit", "100", "RateLimit-Remaining", "0", "RateLimit-Reset", "4"), tableNow,
			draft(ps(policy("", 100, 10*sec)), remaining("", 0, 4*sec))},
		{"-06 limit picks its policy", headers("RateLimit-Policy", "10;w=1, 50;w=60, 1000;w=3600, 5000;w=86400", "RateLimit-Limit", "1000"), tableNow,
			draft(ps(policy("", 1000, time.Hour), policy("", 10, sec), policy("", 50, time.Minute), policy("", 5000, 24*time.Hour)))},
		{"-06 policy with a burst", headers("RateLimit-Policy", "10;w=1;burst=1000, 1000;w=3600", "RateLimit-Remaining", "7"), tableNow,
			draft(ps(policy("", 10, sec), policy("", 1000, time.Hour)), units(7))},
		{"-01 policies in the limit", headers("RateLimit-Limit", "10, 10;w=1, 50;w=60, 1000;w=3600, 5000;w=86400", "RateLimit-Reset", "1"), tableNow,
			draft(ps(policy("", 10, sec), policy("", 50, time.Minute), policy("", 1000, time.Hour), policy("", 5000, 24*time.Hour)), reset(sec))},
		{"-01 limit with a burst", headers("RateLimit-Limit", "10, 10;w=1;burst=1000, 1000;w=3600"), tableNow,
			draft(ps(policy("", 10, sec), policy("", 1000, time.Hour)))},
		{"limit over two lines", headers("RateLimit-Limit", "10", "RateLimit-Limit", "10;w=1"), tableNow,
			draft(ps(policy("", 10, sec)))},
		{"limit with its window", headers("RateLimit-Limit", "100;w=60"), tableNow,
			draft(ps(policy("", 100, time.Minute)))},
		{"remaining alone", headers("RateLimit-Remaining", "3"), tableNow, draft(nil, units(3))},
		{"reset alone", headers("RateLimit-Reset", "45"), tableNow, draft(nil, reset(45*sec))},
		// GitLab's documented answer to a throttled request.
		{"GitLab", headers(
			"RateLimit-Limit", "60",
			"RateLimit-Observed", "67",
			"RateLimit-Remaining", "0",
			"RateLimit-Reset", "1609844400",
			"RateLimit-ResetTime", "Tue, 05 Jan 2021 11:00:00 GMT",
			"Retry-After", "3600"), time.Date(2021, 1, 5, 10, 0, 0, 0, time.UTC),
			limitheader.Signal{RetryAfter: time.Hour, HasRetryAfter: true, Family: limitheader.IETFDraft,
				Policies: ps(policy("", 60, 0)), Remaining: []limitheader.Remaining{remaining("", 0, time.Hour)}}},
		{"reset in Unix milliseconds", headers("RateLimit-Reset", "1609844400000"), time.Date(2021, 1, 5, 10, 0, 0, 0, time.UTC),
			draft(nil, reset(time.Hour))},
		{"reset with a fraction", headers("RateLimit-Reset", "1.25"), tableNow, draft(nil, reset(1250*time.Millisecond))},

		// Malformed values are ignored.
		{"garbage", headers("RateLimit-Limit", "lots", "RateLimit-Remaining", "some", "RateLimit-Reset", "soon"), tableNow, limitheader.Signal{}},
		{"signs", headers("RateLimit-Limit", "-100", "RateLimit-Remaining", "+5", "RateLimit-Reset", "-1"), tableNow, limitheader.Signal{}},
		{"fractional units", headers("RateLimit-Limit", "1.5", "RateLimit-Remaining", "0.5"), tableNow, limitheader.Signal{}},
		{"bad list limit", headers("RateLimit-Limit", `x, 10;w=1`, "RateLimit-Remaining", "1"), tableNow, draft(nil, units(1))},
		{"limit list with a bad w", headers("RateLimit-Limit", `10;w=0, 20;w=-1, 30;w=1`), tableNow,
			draft(ps(policy("", 10, 0), policy("", 30, sec)))},
		{"unterminated list", headers("RateLimit-Limit", `10, "x`), tableNow, limitheader.Signal{}},
		{"empty", headers("RateLimit-Limit", "", "RateLimit-Remaining", " ", "RateLimit-Reset", ""), tableNow, limitheader.Signal{}},

		// Bounds: plain numbers saturate.
		{"huge", headers("RateLimit-Limit", "99999999999999999999999", "RateLimit-Remaining", "99999999999999999999999", "RateLimit-Reset", "999999999"), tableNow,
			draft(ps(policy("", limitheader.MaxUnits, 0)), remaining("", limitheader.MaxUnits, bucket.MaxDuration))},
		{"reset far in the future", headers("RateLimit-Reset", "99999999999999999999"), tableNow, draft(nil, reset(bucket.MaxDuration))},
		{"reset in the past", headers("RateLimit-Reset", "1000000000"), tableNow, draft(nil, reset(0))},
		{"MaxItems policies and a limit", headers("RateLimit-Policy", strings.Join(full, ", "), "RateLimit-Limit", "1000"), tableNow,
			draft(bounded)},
	})
}
