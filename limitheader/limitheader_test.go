package limitheader_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/limitheader"
)

// headers builds an http.Header from name, value pairs, as a response
// would carry them: names canonical, a name given twice, or a value with
// newlines, as several lines of one field.
func headers(kv ...string) http.Header {
	h := make(http.Header)
	for i := 0; i+1 < len(kv); i += 2 {
		for line := range strings.SplitSeq(kv[i+1], "\n") {
			h.Add(kv[i], line)
		}
	}
	return h
}

// The tables' expected values, shortened.
const sec = time.Second

func policy(name string, q int64, w time.Duration) limitheader.Policy {
	return limitheader.Policy{Name: name, Quota: q, Window: w, Unit: "requests"}
}

func ps(p ...limitheader.Policy) []limitheader.Policy { return p }

func remaining(name string, r int64, t time.Duration) limitheader.Remaining {
	return limitheader.Remaining{Policy: name, Units: r, HasUnits: true, Reset: t, HasReset: true}
}

func units(n int64) limitheader.Remaining { return limitheader.Remaining{Units: n, HasUnits: true} }

func reset(d time.Duration) limitheader.Remaining {
	return limitheader.Remaining{Reset: d, HasReset: true}
}

// ietf, draft and xratelimit return the Signal of their family with
// policies and rs.
var (
	ietf       = family(limitheader.IETF)
	draft      = family(limitheader.IETFDraft)
	xratelimit = family(limitheader.XRateLimit)
)

func family(f limitheader.Family) func([]limitheader.Policy, ...limitheader.Remaining) limitheader.Signal {
	return func(policies []limitheader.Policy, rs ...limitheader.Remaining) limitheader.Signal {
		return limitheader.Signal{Family: f, Policies: policies, Remaining: rs}
	}
}

var (
	// tableNow is 2015-10-21 07:00:00 UTC.
	tableNow = time.Date(2015, 10, 21, 7, 0, 0, 0, time.UTC)
	// githubNow is 873 seconds before GitHub's documented reset,
	// X-RateLimit-Reset: 1372700873.
	githubNow = time.Unix(1372700000, 0)
)

// signalTest is a row of the per-family tables: headers read at now, and
// the Signal they should give.
type signalTest struct {
	name string
	h    http.Header
	now  time.Time
	want limitheader.Signal
}

// runSignalTests checks ParseHeader against each row, and that what it
// returns keeps the package's bounds.
func runSignalTests(t *testing.T, tests []signalTest) {
	t.Helper()
	for _, tt := range tests {
		now := tt.now
		if now.IsZero() {
			now = tableNow
		}
		got := limitheader.ParseHeader(tt.h, now)
		assert.Equal(t, tt.want, got, "%s: ParseHeader(%v)", tt.name, tt.h)
		checkBounds(t, tt.h, got)
	}
}

// checkBounds fails t when s breaks a bound the package promises.
func checkBounds(t *testing.T, h http.Header, s limitheader.Signal) {
	t.Helper()
	duration := func(d time.Duration) bool { return d >= 0 && d <= bucket.MaxDuration }
	units := func(n int64) bool { return n >= 0 && n <= limitheader.MaxUnits }
	if !duration(s.RetryAfter) || (!s.HasRetryAfter && s.RetryAfter != 0) {
		t.Errorf("ParseHeader(%v).RetryAfter = %v, %v: want a delay in [0, %v], 0 when not valid", h, s.RetryAfter, s.HasRetryAfter, bucket.MaxDuration)
	}
	if s.Family > limitheader.XRateLimit ||
		(s.Family == limitheader.None) != (len(s.Policies) == 0 && len(s.Remaining) == 0) {
		t.Errorf("ParseHeader(%v) = family %v with %d policies and %d remaining", h, s.Family, len(s.Policies), len(s.Remaining))
	}
	if len(s.Policies) > limitheader.MaxItems || len(s.Remaining) > limitheader.MaxItems ||
		(s.Family != limitheader.IETF && len(s.Remaining) > 1) {
		t.Errorf("ParseHeader(%v) = %d policies, %d remaining (family %v): too many", h, len(s.Policies), len(s.Remaining), s.Family)
	}
	for _, p := range s.Policies {
		if !units(p.Quota) || !duration(p.Window) || (p.Window != 0 && p.Window < time.Second) || p.Unit == "" {
			t.Errorf("ParseHeader(%v): policy %+v out of bounds", h, p)
		}
	}
	for _, r := range s.Remaining {
		if !units(r.Units) || !duration(r.Reset) || (!r.HasUnits && r.Units != 0) || (!r.HasReset && r.Reset != 0) ||
			(!r.HasUnits && !r.HasReset) {
			t.Errorf("ParseHeader(%v): remaining %+v out of bounds", h, r)
		}
	}
}

func TestPrecedence(t *testing.T) {
	var (
		ietf = []string{"RateLimit-Policy", `"day";q=1000;w=86400`, "RateLimit", `"day";r=10;t=600`}
		// -06 fields, and GitHub's
		draft  = []string{"RateLimit-Limit", "100", "RateLimit-Remaining", "20", "RateLimit-Reset", "30"}
		github = []string{"X-RateLimit-Limit", "5000", "X-RateLimit-Remaining", "4999", "X-RateLimit-Reset", "1372700873"}

		ietfSignal = limitheader.Signal{
			Family:    limitheader.IETF,
			Policies:  []limitheader.Policy{{Name: "day", Quota: 1000, Window: 24 * time.Hour, Unit: "requests"}},
			Remaining: []limitheader.Remaining{{Policy: "day", Units: 10, HasUnits: true, Reset: 10 * time.Minute, HasReset: true}},
		}
		draftSignal = limitheader.Signal{
			Family:    limitheader.IETFDraft,
			Policies:  []limitheader.Policy{{Quota: 100, Unit: "requests"}},
			Remaining: []limitheader.Remaining{{Units: 20, HasUnits: true, Reset: 30 * time.Second, HasReset: true}},
		}
		githubSignal = limitheader.Signal{
			Family:    limitheader.XRateLimit,
			Policies:  []limitheader.Policy{{Quota: 5000, Unit: "requests"}},
			Remaining: []limitheader.Remaining{{Units: 4999, HasUnits: true, Reset: 873 * time.Second, HasReset: true}},
		}
	)
	join := func(kvs ...[]string) http.Header {
		var all []string
		for _, kv := range kvs {
			all = append(all, kv...)
		}
		return headers(all...)
	}
	withRetry := func(s limitheader.Signal) limitheader.Signal {
		s.RetryAfter, s.HasRetryAfter = 2*time.Second, true
		return s
	}
	retry := []string{"Retry-After", "2"}
	runSignalTests(t, []signalTest{
		{"IETF over the drafts and GitHub", join(github, draft, ietf), githubNow, ietfSignal},
		{"the drafts over GitHub", join(github, draft), githubNow, draftSignal},
		{"GitHub alone", join(github), githubNow, githubSignal},
		{"Retry-After beside IETF", join(retry, ietf), githubNow, withRetry(ietfSignal)},
		{"Retry-After beside the drafts", join(draft, retry), githubNow, withRetry(draftSignal)},
		{"Retry-After beside GitHub", join(github, retry), githubNow, withRetry(githubSignal)},
		{"Retry-After alone", join(retry), githubNow, withRetry(limitheader.Signal{})},
		{"malformed IETF falls to the drafts", join(draft, []string{"RateLimit", `"day";r=10;t=600,`}), githubNow, draftSignal},
		{"empty drafts fall to GitHub", join(github, []string{"RateLimit-Remaining", "-1", "RateLimit-Limit", "x"}), githubNow, githubSignal},
		{"a named policy alone makes it IETF", join(draft, []string{"RateLimit-Policy", `"day";q=1000;w=86400`}), githubNow, limitheader.Signal{
			Family:   limitheader.IETF,
			Policies: []limitheader.Policy{{Name: "day", Quota: 1000, Window: 24 * time.Hour, Unit: "requests"}},
		}},
		{"integer policies go with the drafts", join(draft, []string{"RateLimit-Policy", "100;w=60"}), githubNow, limitheader.Signal{
			Family:    limitheader.IETFDraft,
			Policies:  []limitheader.Policy{{Quota: 100, Window: time.Minute, Unit: "requests"}},
			Remaining: draftSignal.Remaining,
		}},
		{"nothing", headers("Content-Type", "application/json"), githubNow, limitheader.Signal{}},
	})
}

func TestParse(t *testing.T) {
	resp := func(kv ...string) *http.Response {
		return &http.Response{StatusCode: http.StatusOK, Header: headers(kv...)}
	}
	tests := []struct {
		name string
		resp *http.Response
		want limitheader.Signal
	}{
		{"nil", nil, limitheader.Signal{}},
		{"Unix time against Date", resp("Date", "Mon, 01 Jul 2013 17:33:20 GMT", "X-RateLimit-Reset", "1372700873"),
			xratelimit(nil, reset(873*time.Second))},
		// Against the local clock, 2013 is long past: no wait.
		{"Unix time without Date", resp("X-RateLimit-Reset", "1372700873"),
			xratelimit(nil, reset(0))},
		{"Unix time with a bad Date", resp("Date", "yesterday", "X-RateLimit-Reset", "1372700873"),
			xratelimit(nil, reset(0))},
		// The example of draft -11, appendix B.1.4.
		{"Retry-After date against Date", resp("Date", "Mon, 05 Aug 2019 09:27:00 GMT",
			"Retry-After", "Mon, 05 Aug 2019 09:27:05 GMT", "RateLimit", `"default";r=0;t=5`),
			limitheader.Signal{
				RetryAfter: 5 * time.Second, HasRetryAfter: true, Family: limitheader.IETF,
				Remaining: []limitheader.Remaining{{Policy: "default", HasUnits: true, Reset: 5 * time.Second, HasReset: true}},
			}},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, limitheader.Parse(tt.resp), tt.name)
	}
}

func TestRetryAfter(t *testing.T) {
	const decade = bucket.MaxDuration
	tests := []struct {
		value  string
		want   time.Duration
		wantOK bool
	}{
		{"120", 2 * time.Minute, true},
		{"0", 0, true},
		{" 120 ", 2 * time.Minute, true},
		{"1.5", 1500 * time.Millisecond, true},
		{"0.0000000001", time.Nanosecond, true},
		{"120, 120", 2 * time.Minute, true},
		{"Wed, 21 Oct 2015 07:28:00 GMT", 28 * time.Minute, true},
		{"Wednesday, 21-Oct-15 07:28:00 GMT", 28 * time.Minute, true},
		{"Wed Oct 21 07:28:00 2015", 28 * time.Minute, true},
		{"Wed, 21 Oct 2015 06:00:00 GMT", 0, true},
		{"Fri, 31 Dec 9999 23:59:59 GMT", decade, true},
		{"99999999999999999999999999", decade, true},
		{"315359999", decade - time.Second, true},
		{"-5", 0, false},
		{"+5", 0, false},
		{"5s", 0, false},
		{"1e3", 0, false},
		{"NaN", 0, false},
		{"5.", 0, false},
		{"soon", 0, false},
		{"soon, 120", 0, false},
	}
	for _, tt := range tests {
		got := limitheader.ParseHeader(headers("Retry-After", tt.value), tableNow)
		assert.Equal(t, tt.want, got.RetryAfter, "Retry-After: %s", tt.value)
		assert.Equal(t, tt.wantOK, got.HasRetryAfter, "Retry-After: %s: valid", tt.value)
		assert.Equal(t, limitheader.None, got.Family, "Retry-After: %s: family", tt.value)
	}
}

func TestExhausted(t *testing.T) {
	tests := []struct {
		h    http.Header
		want bool
	}{
		{headers(), false},
		{headers("Retry-After", "5"), false},
		{headers("X-RateLimit-Remaining", "0"), true},
		{headers("X-RateLimit-Remaining", "1"), false},
		{headers("X-RateLimit-Reset", "60"), false},
		{headers("RateLimit", `"a";r=5;t=1, "b";r=0;t=60`), true},
		{headers("RateLimit", `"a";r=5;t=1, "b";t=60`), false},
		{headers("RateLimit-Remaining", "0"), true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, limitheader.ParseHeader(tt.h, tableNow).Exhausted(), "Exhausted(%v)", tt.h)
	}
}

func TestFamilyString(t *testing.T) {
	for f, want := range map[limitheader.Family]string{
		limitheader.None: "none", limitheader.IETF: "ietf", limitheader.IETFDraft: "ietf-draft",
		limitheader.XRateLimit: "x-ratelimit", 9: "family(9)",
	} {
		assert.Equal(t, want, f.String())
	}
}
