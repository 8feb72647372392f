package middleware_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/middleware"
)

// headers builds an http.Header from name, value pairs.
func headers(kv ...string) http.Header {
	h := make(http.Header)
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

var (
	// now for the header tables: 2015-10-21 07:00:00 UTC.
	tableNow = time.Date(2015, 10, 21, 7, 0, 0, 0, time.UTC)
	// githubNow is 873 seconds before GitHub's documented reset example.
	githubNow = time.Unix(1372700000, 0)
)

func TestParseRetryAfter(t *testing.T) {
	const day = 24 * time.Hour
	tests := []struct {
		name   string
		h      http.Header
		now    time.Time
		want   time.Duration
		wantOK bool
	}{
		{"none", headers(), tableNow, 0, false},
		{"Retry-After seconds", headers("Retry-After", "120"), tableNow, 2 * time.Minute, true},
		{"Retry-After zero", headers("Retry-After", "0"), tableNow, 0, true},
		{"Retry-After padded", headers("Retry-After", " 120 "), tableNow, 2 * time.Minute, true},
		{"Retry-After fraction", headers("Retry-After", "1.5"), tableNow, 1500 * time.Millisecond, true},
		{"Retry-After fraction rounds up", headers("Retry-After", "0.0000000001"), tableNow, time.Nanosecond, true},
		{"Retry-After fraction carries", headers("Retry-After", "1.9999999999"), tableNow, 2 * time.Second, true},
		{"Retry-After IMF date", headers("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"), tableNow, 28 * time.Minute, true},
		{"Retry-After RFC 850 date", headers("Retry-After", "Wednesday, 21-Oct-15 07:28:00 GMT"), tableNow, 28 * time.Minute, true},
		{"Retry-After asctime date", headers("Retry-After", "Wed Oct 21 07:28:00 2015"), tableNow, 28 * time.Minute, true},
		{"Retry-After past date", headers("Retry-After", "Wed, 21 Oct 2015 06:00:00 GMT"), tableNow, 0, true},
		{"Retry-After far date", headers("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT"), tableNow, day, true},
		{"Retry-After huge", headers("Retry-After", "99999999999999999999999999"), tableNow, day, true},
		{"Retry-After just under a day", headers("Retry-After", "86399"), tableNow, day - time.Second, true},
		{"Retry-After negative", headers("Retry-After", "-5"), tableNow, 0, false},
		{"Retry-After plus", headers("Retry-After", "+5"), tableNow, 0, false},
		{"Retry-After unit", headers("Retry-After", "5s"), tableNow, 0, false},
		{"Retry-After exponent", headers("Retry-After", "1e3"), tableNow, 0, false},
		{"Retry-After hex", headers("Retry-After", "0x10"), tableNow, 0, false},
		{"Retry-After NaN", headers("Retry-After", "NaN"), tableNow, 0, false},
		{"Retry-After dot", headers("Retry-After", "."), tableNow, 0, false},
		{"Retry-After trailing dot", headers("Retry-After", "5."), tableNow, 0, false},
		{"Retry-After garbage", headers("Retry-After", "soon"), tableNow, 0, false},
		{"Retry-After empty", headers("Retry-After", ""), tableNow, 0, false},
		{"Retry-After wins over reset", headers("Retry-After", "120", "X-RateLimit-Reset", "1445414400"), tableNow, 2 * time.Minute, true},
		{"garbage Retry-After falls through", headers("Retry-After", "soon", "X-RateLimit-Reset", "30"), tableNow, 30 * time.Second, true},
		{"first Retry-After counts", headers("Retry-After", "7", "Retry-After", "9"), tableNow, 7 * time.Second, true},

		{"GitHub x-ratelimit-reset", headers("x-ratelimit-reset", "1372700873"), githubNow, 873 * time.Second, true},
		{"GitHub reset in the past", headers("X-RateLimit-Reset", "1372699000"), githubNow, 0, true},
		{"Twitter x-rate-limit-reset", headers("x-rate-limit-reset", "1372700900"), githubNow, 900 * time.Second, true},
		{"Discord reset with fraction", headers("X-RateLimit-Reset", "1372700001.123"), githubNow, 1123 * time.Millisecond, true},
		{"Discord reset-after", headers("X-RateLimit-Reset-After", "64.57"), githubNow, 64570 * time.Millisecond, true},
		{"reset in Unix milliseconds", headers("X-RateLimit-Reset", "1372700873000"), githubNow, 873 * time.Second, true},
		{"reset as a delta", headers("X-RateLimit-Reset", "60"), githubNow, time.Minute, true},
		{"reset delta just under 1e9", headers("X-RateLimit-Reset", "999999999"), githubNow, day, true},
		{"reset at 1e9 is a Unix time", headers("X-RateLimit-Reset", "1000000000"), githubNow, 0, true},
		{"reset far future", headers("X-RateLimit-Reset", "99999999999"), githubNow, day, true},
		{"reset negative", headers("X-RateLimit-Reset", "-1"), githubNow, 0, false},
		{"reset garbage", headers("X-RateLimit-Reset", "tomorrow"), githubNow, 0, false},

		{"IETF RateLimit", headers("RateLimit", `"default";r=0;t=30`), tableNow, 30 * time.Second, true},
		{"IETF RateLimit token", headers("RateLimit", `default;r=0;t=30`), tableNow, 30 * time.Second, true},
		{"IETF RateLimit two exhausted", headers("RateLimit", `"burst";r=0;t=1, "daily";r=0;t=3600`), tableNow, time.Hour, true},
		{"IETF RateLimit one exhausted", headers("RateLimit", `"burst";r=5;t=1, "daily";r=0;t=3600`), tableNow, time.Hour, true},
		{"IETF RateLimit none exhausted", headers("RateLimit", `"a";r=5;t=10, "b";r=3;t=4`), tableNow, 4 * time.Second, true},
		{"IETF RateLimit no r", headers("RateLimit", `"a";t=10`), tableNow, 10 * time.Second, true},
		{"IETF RateLimit split over lines", headers("RateLimit", `"a";r=2;t=10`, "RateLimit", `"b";r=0;t=20`), tableNow, 20 * time.Second, true},
		{"IETF RateLimit quoted separators", headers("RateLimit", `"x,y;t=5\"";r=0;t=7`), tableNow, 7 * time.Second, true},
		{"IETF RateLimit negative t", headers("RateLimit", `"default";r=0;t=-1`), tableNow, 0, false},
		{"IETF RateLimit no t", headers("RateLimit", `"default";r=0;pk=:YWJj:`), tableNow, 0, false},
		{"IETF RateLimit garbage", headers("RateLimit", `;;;==,,"`), tableNow, 0, false},
		{"IETF RateLimit huge t", headers("RateLimit", `"default";r=0;t=999999999999999`), tableNow, day, true},
		{"draft RateLimit dictionary", headers("RateLimit", "limit=100, remaining=0, reset=30"), tableNow, 30 * time.Second, true},
		{"draft RateLimit-Reset", headers("RateLimit-Reset", "45"), tableNow, 45 * time.Second, true},
		{"GitLab RateLimit-Reset as a Unix time", headers("RateLimit-Remaining", "0", "RateLimit-Reset", "1372700060"), githubNow, time.Minute, true},
		{"Retry-After folded by a proxy", headers("Retry-After", "120, 120"), tableNow, 2 * time.Minute, true},
		{"Retry-After list with garbage first", headers("Retry-After", "soon, 120"), tableNow, 0, false},
		{"draft RateLimit-Reset garbage falls through", headers("RateLimit-Reset", "x", "X-RateLimit-Reset", "5"), tableNow, 5 * time.Second, true},
		{"RateLimit wins over X-RateLimit-Reset", headers("RateLimit", `"d";r=0;t=3`, "X-RateLimit-Reset", "50"), tableNow, 3 * time.Second, true},
		{"reset of a window with units left", headers("X-RateLimit-Remaining", "4999", "X-RateLimit-Reset", "1372703700"), githubNow, 0, false},
		{"draft reset with units left", headers("RateLimit-Remaining", "3", "RateLimit-Reset", "45"), tableNow, 0, false},
		{"reset with no units left", headers("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "60"), githubNow, time.Minute, true},
		{"reset with garbage remaining", headers("X-RateLimit-Remaining", "lots", "X-RateLimit-Reset", "60"), githubNow, time.Minute, true},
		{"Retry-After with units left", headers("Retry-After", "7", "X-RateLimit-Remaining", "10"), tableNow, 7 * time.Second, true},
	}
	for _, tt := range tests {
		got, ok := middleware.ParseRetryAfter(tt.h, tt.now)
		assert.Equal(t, tt.want, got, "ParseRetryAfter(%s: %v)", tt.name, tt.h)
		assert.Equal(t, tt.wantOK, ok, "ParseRetryAfter(%s: %v) ok", tt.name, tt.h)
	}
}

func TestFromResponse(t *testing.T) {
	resp := func(code int, kv ...string) *http.Response {
		return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: headers(kv...)}
	}
	tests := []struct {
		name      string
		resp      *http.Response
		want      time.Duration
		wantRetry bool
	}{
		{"nil", nil, 0, false},
		{"200", resp(200, "Retry-After", "5"), 0, false},
		{"500", resp(500, "Retry-After", "5"), 0, false},
		{"429 without headers", resp(429), middleware.DefaultRetryAfter, true},
		{"429 with garbage", resp(429, "Retry-After", "later"), middleware.DefaultRetryAfter, true},
		{"429 Retry-After", resp(429, "Retry-After", "120"), 2 * time.Minute, true},
		{"429 Retry-After 0", resp(429, "Retry-After", "0"), 0, true},
		{"429 date against Date", resp(429, "Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT", "Date", "Wed, 21 Oct 2015 07:27:30 GMT"), 30 * time.Second, true},
		{"429 epoch against Date", resp(429, "X-RateLimit-Reset", "1445412480", "Date", "Wed, 21 Oct 2015 07:27:30 GMT"), 30 * time.Second, true},
		{"429 IETF RateLimit", resp(429, "RateLimit", `"default";r=0;t=30`), 30 * time.Second, true},
		{"503 without headers", resp(503), 0, false},
		{"503 Retry-After", resp(503, "Retry-After", "30"), 30 * time.Second, true},
		{"503 with GitHub's headers", resp(503, "X-RateLimit-Remaining", "4999", "X-RateLimit-Reset", "1445415000", "Date", "Wed, 21 Oct 2015 07:27:00 GMT"), 0, false},
		{"503 with a reset only", resp(503, "X-RateLimit-Reset", "60"), 0, false},
		{"429 with units left and a far reset", resp(429, "X-RateLimit-Remaining", "4999", "X-RateLimit-Reset", "3000"), middleware.DefaultRetryAfter, true},
		{"403 GitHub rate limit", resp(403, "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "1445412480", "Date", "Wed, 21 Oct 2015 07:27:00 GMT"), time.Minute, true},
		{"403 GitHub rate limit without reset", resp(403, "X-RateLimit-Remaining", "0"), middleware.DefaultRetryAfter, true},
		{"403 with quota left", resp(403, "X-RateLimit-Remaining", "12", "X-RateLimit-Reset", "60"), 0, false},
		{"403 plain", resp(403), 0, false},
		{"403 GitHub secondary rate limit", resp(403, "Retry-After", "60", "X-RateLimit-Remaining", "4000", "X-RateLimit-Reset", "1445412480"), time.Minute, true},
		{"403 with garbage Retry-After", resp(403, "Retry-After", "x", "X-RateLimit-Remaining", "4000", "X-RateLimit-Reset", "60"), 0, false},
	}
	for _, tt := range tests {
		err := middleware.FromResponse(tt.resp)
		if !tt.wantRetry {
			assert.NoError(t, err, tt.name)
			continue
		}
		got, ok := middleware.RetryAfter(err)
		assert.True(t, ok, "%s: RetryAfter(%v) found no delay", tt.name, err)
		assert.Equal(t, tt.want, got, "%s: RetryAfter(%v)", tt.name, err)
		var se *middleware.StatusError
		if assert.ErrorAs(t, err, &se, tt.name) {
			assert.Equal(t, tt.resp.StatusCode, se.StatusCode, "%s: StatusError's code", tt.name)
		}
	}
}

func TestFromResponseMessage(t *testing.T) {
	tests := []struct {
		resp *http.Response
		want string
	}{
		{&http.Response{StatusCode: 429, Status: "429 Too Many Requests", Header: headers("Retry-After", "120")},
			"middleware: HTTP 429 Too Many Requests (retry after 2m0s)"},
		{&http.Response{StatusCode: 503, Header: headers("Retry-After", "3")},
			"middleware: HTTP 503 Service Unavailable (retry after 3s)"},
	}
	for _, tt := range tests {
		err := middleware.FromResponse(tt.resp)
		require.Error(t, err)
		assert.EqualError(t, err, tt.want)
	}
}

var fuzzHeaders = []string{
	"Retry-After", "RateLimit", "RateLimit-Reset", "X-RateLimit-Reset-After",
	"X-RateLimit-Reset", "X-Rate-Limit-Reset", "Date", "X-RateLimit-Remaining",
}

func FuzzParseRetryAfter(f *testing.F) {
	seeds := []struct {
		header uint8
		value  string
	}{
		{0, "120"}, {0, "Wed, 21 Oct 2015 07:28:00 GMT"}, {0, "-5"}, {0, "1.5"}, {0, "99999999999999999999999"},
		{1, `"default";r=0;t=30`}, {1, `"a";r=5;t=10, "b";r=0;t=4`}, {1, "limit=100, remaining=0, reset=30"}, {1, `"x\";t=1`},
		{2, "45"}, {3, "64.57"}, {4, "1372700873"}, {4, "1372700873000"}, {4, "1470173023.123"}, {5, "60"},
		{6, "Wed, 21 Oct 2015 07:27:30 GMT"}, {7, "0"},
	}
	for _, s := range seeds {
		f.Add(s.header, s.value, int64(1445410800))
	}
	f.Fuzz(func(t *testing.T, header uint8, value string, now int64) {
		h := http.Header{fuzzHeaders[int(header)%len(fuzzHeaders)]: {value}}
		d, ok := middleware.ParseRetryAfter(h, time.Unix(now, 0))
		require.Truef(t, d >= 0 && d <= middleware.MaxRetryAfter && (ok || d == 0),
			"ParseRetryAfter(%v) = %v, %v, want a delay in [0, %v] (0 when not ok)", h, d, ok, middleware.MaxRetryAfter)
		for _, code := range []int{403, 429, 503} {
			err := middleware.FromResponse(&http.Response{StatusCode: code, Header: h})
			got, found := middleware.RetryAfter(err)
			require.Truef(t, (found || code != 429) && got >= 0 && got <= middleware.MaxRetryAfter,
				"FromResponse(%d, %v) = %v, want a retry-after in [0, %v]", code, h, err, middleware.MaxRetryAfter)
			if err != nil {
				_ = err.Error()
			}
		}
	})
}
