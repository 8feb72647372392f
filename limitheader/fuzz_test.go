package limitheader_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/limitheader"
)

// fuzzParse parses h at now, directly and as a response dated now, checks
// the bounds of both, and that the family is one of families (or None).
func fuzzParse(t *testing.T, h http.Header, now int64, families ...limitheader.Family) {
	t.Helper()
	at := time.Unix(now, 0)
	s := limitheader.ParseHeader(h, at)
	checkBounds(t, h, s)
	if s.Family != limitheader.None && !contains(families, s.Family) {
		t.Errorf("ParseHeader(%v) = family %v, want one of %v", h, s.Family, families)
	}
	resp := &http.Response{StatusCode: http.StatusTooManyRequests, Header: h.Clone()}
	if resp.Header == nil {
		resp.Header = make(http.Header)
	}
	resp.Header.Set("Date", at.UTC().Format(http.TimeFormat))
	checkBounds(t, resp.Header, limitheader.Parse(resp))
}

func contains(fs []limitheader.Family, f limitheader.Family) bool {
	for _, g := range fs {
		if g == f {
			return true
		}
	}
	return false
}

const fuzzNow = 1445410800 // 2015-10-21 07:00:00 UTC

func FuzzIETF(f *testing.F) {
	seeds := [][2]string{
		{`"burst";q=100;w=60, "day";q=1000;w=86400`, `"burst";r=50;t=30`},
		{`"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:`, `"default";r=300000000;t=60;pk=:QXBwLTk5OQ==:`},
		{`"hour";q=1000;w=3600, "day";q=5000;w=86400`, `"day";r=100;t=36000`},
		{"\"sliding\";q=100;w=60;burst=1000\n\"fixed\";q=5000;w=3600;burst=0", `"sliding";r=50;t=44`},
		{`default;q=5;w=1`, `default;r=0;t=30`},
		{"100;w=10", "limit=100, remaining=50, reset=5"},
		{"10;w=1, 50;w=60, 1000;w=3600", "limit=50, remaining=0, reset=1.5"},
		{`"a";q=999999999999999;w=999999999999999`, `"a";r=999999999999999;t=999999999999.999`},
		{`"a";q=-1;w=0`, `"a";r=-1;t=-1, ("x" "y");r=0;t=1, 5;r=0;t=3`},
		{`"x,y;t=5\"";q=1`, `"x,y;t=5\"";r=0;t=7`},
		{`?1;q=1, :YWJj:;q=2, @1659578233;q=3, %"caf%c3%a9";q=4`, `"a";r=1;t=@1659578233`},
		{`"unterminated;q=1`, `;;;==,,"`},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], int64(fuzzNow))
	}
	f.Fuzz(func(t *testing.T, policy, ratelimit string, now int64) {
		h := headers("RateLimit-Policy", policy, "RateLimit", ratelimit)
		// Integer policies alone are the drafts'.
		fuzzParse(t, h, now, limitheader.IETF, limitheader.IETFDraft)
	})
}

func FuzzIETFDraft(f *testing.F) {
	seeds := [][4]string{
		{"100", "50", "50", ""},
		{"100", "0", "4", "100;w=10"},
		{"1000", "", "", "10;w=1, 50;w=60, 1000;w=3600, 5000;w=86400"},
		{"10, 10;w=1, 50;w=60, 1000;w=3600, 5000;w=86400", "", "1", ""},
		{"10\n10;w=1", "7", "", "10;w=1;burst=1000, 1000;w=3600"},
		{"60", "0", "1609844400", ""},
		{"", "", "1609844400000", ""},
		{"99999999999999999999999", "99999999999999999999999", "999999999", ""},
		{"-100", "+5", "-1", "0;w=0"},
		{"1.5", "0.5", "1.25", "100;w=1.5"},
		{`x, 10;w=1`, "1", "soon", `10, "x`},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2], s[3], int64(fuzzNow))
	}
	f.Fuzz(func(t *testing.T, limit, remaining, reset, policy string, now int64) {
		h := headers("RateLimit-Limit", limit, "RateLimit-Remaining", remaining,
			"RateLimit-Reset", reset, "RateLimit-Policy", policy)
		// A named RateLimit-Policy makes it IETF.
		fuzzParse(t, h, now, limitheader.IETF, limitheader.IETFDraft)
	})
}

func FuzzXRateLimit(f *testing.F) {
	seeds := [][5]string{
		{"60", "42", "1372700873", "", ""},
		{"5000", "4999", "1691591363", "", "core"},
		{"5", "0", "1470173023", "1", ""},
		{"", "", "1470173023.123", "64.57", ""},
		{"10, 10;w=1", "9", "1", "", ""},
		{"10, 100;w=60, 10;w=1", "2", "", "", ""},
		{"", "", "1372700873000", "", ""},
		{"99999999999999999999999", "1000000000000000", "99999999999999999999", "", ""},
		{"+60", "-1", "1e9", "-5", ""},
		{"lots", "1.5", "tomorrow", "soon", " "},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2], s[3], s[4], int64(1372700000))
	}
	f.Fuzz(func(t *testing.T, limit, remaining, reset, resetAfter, resource string, now int64) {
		h := headers("X-RateLimit-Limit", limit, "X-RateLimit-Remaining", remaining,
			"X-RateLimit-Reset", reset, "X-RateLimit-Reset-After", resetAfter, "X-RateLimit-Resource", resource,
			// Twitter's spelling, read where GitHub's is invalid
			"X-Rate-Limit-Limit", remaining, "X-Rate-Limit-Remaining", limit, "X-Rate-Limit-Reset", resetAfter)
		fuzzParse(t, h, now, limitheader.XRateLimit)
	})
}

func FuzzRetryAfter(f *testing.F) {
	for _, v := range []string{
		"120", "0", "1.5", "120, 120", "Wed, 21 Oct 2015 07:28:00 GMT", "Wednesday, 21-Oct-15 07:28:00 GMT",
		"Wed Oct 21 07:28:00 2015", "Fri, 31 Dec 9999 23:59:59 GMT", "99999999999999999999999", "-5", "soon, 120",
	} {
		f.Add(v, int64(fuzzNow))
	}
	f.Fuzz(func(t *testing.T, value string, now int64) {
		h := headers("Retry-After", value)
		fuzzParse(t, h, now)
	})
}
