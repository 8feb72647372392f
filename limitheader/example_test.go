package limitheader_test

import (
	"fmt"
	"net/http"
	"time"

	"github.com/leakybucket/leakybucket/limitheader"
)

// A GitHub answer: the limit, what is left, and when the window resets,
// measured against the answer's Date.
func ExampleParse() {
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{
		"Date":                  {"Mon, 01 Jul 2013 17:33:20 GMT"},
		"X-Ratelimit-Limit":     {"60"},
		"X-Ratelimit-Remaining": {"42"},
		"X-Ratelimit-Reset":     {"1372700873"},
	}}
	s := limitheader.Parse(resp)
	fmt.Println(s.Family, s.Policies[0].Quota, s.Remaining[0].Units, s.Remaining[0].Reset)
	// Output: x-ratelimit 60 42 14m33s
}

// An IETF answer with two policies, one of them reported.
func ExampleParseHeader() {
	h := http.Header{}
	h.Set("RateLimit-Policy", `"burst";q=100;w=60, "day";q=1000;w=86400`)
	h.Set("RateLimit", `"burst";r=0;t=30`)
	h.Set("Retry-After", "30")
	s := limitheader.ParseHeader(h, time.Now())
	for _, p := range s.Policies {
		fmt.Printf("%s: %d %s per %v\n", p.Name, p.Quota, p.Unit, p.Window)
	}
	for _, r := range s.Remaining {
		fmt.Printf("%s: %d left for %v\n", r.Policy, r.Units, r.Reset)
	}
	fmt.Println("exhausted:", s.Exhausted(), "retry after:", s.RetryAfter)
	// Output:
	// burst: 100 requests per 1m0s
	// day: 1000 requests per 24h0m0s
	// burst: 0 left for 30s
	// exhausted: true retry after: 30s
}
