package middleware_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/leakybucket/leakybucket/middleware"
)

// TestRetryAfterOneFamily checks what limitheader's precedence means for
// ParseRetryAfter, which reads a reset with its own family's remaining
// units only, and for FromResponse, which takes a 403 reporting a spent
// quota in any family, as GitHub's X-RateLimit-Remaining: 0, for a
// request to come back.
func TestRetryAfterOneFamily(t *testing.T) {
	const none = -1 // no delay: ParseRetryAfter's ok is false, or FromResponse(403) is nil
	tests := []struct {
		name      string
		h         http.Header
		parsed    time.Duration // ParseRetryAfter
		forbidden time.Duration // FromResponse of a 403
	}{
		{"draft reset beside GitHub's units left", headers("X-RateLimit-Remaining", "5", "RateLimit-Reset", "45"), 45 * time.Second, none},
		{"GitHub reset beside the draft's units left", headers("RateLimit-Remaining", "5", "X-RateLimit-Reset", "45"), none, none},
		{"draft reset before Discord's reset-after", headers("X-RateLimit-Reset-After", "3", "RateLimit-Reset", "45"), 45 * time.Second, none},
		{"IETF without a t hides GitHub's reset", headers("RateLimit", `"d";r=0`, "X-RateLimit-Reset", "45"), none, middleware.DefaultRetryAfter},
		{"Twitter's reset, GitHub's units spent", headers("X-RateLimit-Remaining", "0", "X-Rate-Limit-Reset", "45"), 45 * time.Second, 45 * time.Second},
		{"IETF r=0", headers("RateLimit", `"hour";r=0;t=5`), 5 * time.Second, 5 * time.Second},
		{"IETF r>0", headers("RateLimit", `"hour";r=3;t=5`), 5 * time.Second, none},
		{"draft remaining 0", headers("RateLimit-Remaining", "0", "RateLimit-Reset", "7"), 7 * time.Second, 7 * time.Second},
		{"Twitter remaining 0", headers("X-Rate-Limit-Remaining", "0"), none, middleware.DefaultRetryAfter},
		{"GitHub remaining 00", headers("X-RateLimit-Remaining", "00"), none, middleware.DefaultRetryAfter},
	}
	delay := func(d time.Duration, ok bool) time.Duration {
		if !ok {
			return none
		}
		return d
	}
	for _, tt := range tests {
		assert.Equal(t, tt.parsed, delay(middleware.ParseRetryAfter(tt.h, tableNow)), "ParseRetryAfter(%s: %v)", tt.name, tt.h)
		err := middleware.FromResponse(&http.Response{StatusCode: http.StatusForbidden, Header: tt.h})
		assert.Equal(t, tt.forbidden, delay(middleware.RetryAfter(err)), "FromResponse(403, %s: %v) = %v", tt.name, tt.h, err)
	}
}
