package limitheader_test

import (
	"net/http"
	"testing"

	"github.com/leakybucket/leakybucket/limitheader"
)

// BenchmarkParse parses typical answers of each family, among the other
// headers such an answer carries.
func BenchmarkParse(b *testing.B) {
	common := []string{
		"Date", "Mon, 05 Aug 2019 09:27:00 GMT",
		"Content-Type", "application/json; charset=utf-8",
		"Cache-Control", "private, max-age=60, s-maxage=60",
		"Etag", `W/"f1d2d2f924e986ac86fdf7b36c94bcdf32beec15"`,
		"Vary", "Accept, Authorization, Cookie",
	}
	answers := []struct {
		name string
		kv   []string
	}{
		{"family=none", nil},
		{"family=github", []string{
			"X-RateLimit-Limit", "5000", "X-RateLimit-Remaining", "4999", "X-RateLimit-Used", "1",
			"X-RateLimit-Reset", "1565000000", "X-RateLimit-Resource", "core"}},
		{"family=ietf", []string{
			"RateLimit-Policy", `"burst";q=100;w=60, "day";q=1000;w=86400`,
			"RateLimit", `"burst";r=50;t=30`}},
		{"family=ietf-draft", []string{
			"RateLimit-Policy", "100;w=60", "RateLimit-Limit", "100", "RateLimit-Remaining", "50", "RateLimit-Reset", "30"}},
		{"retry-after", []string{"Retry-After", "30"}},
	}
	for _, a := range answers {
		resp := &http.Response{StatusCode: http.StatusOK, Header: headers(append(common[:len(common):len(common)], a.kv...)...)}
		b.Run(a.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = limitheader.Parse(resp)
			}
		})
	}
}
