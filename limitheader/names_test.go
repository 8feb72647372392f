package limitheader

import (
	"net/textproto"
	"testing"
)

// TestNamesCanonical checks that every name looked up in the map directly
// is in the form net/http stores it in; one that is not would never be
// found.
func TestNamesCanonical(t *testing.T) {
	for _, name := range []string{
		hDate, hRetryAfter, hRateLimit, hRateLimitPolicy, hRateLimitLimit, hRateLimitRemaining, hRateLimitReset,
		hXRateLimitLimit, hXRateLimitRemaining, hXRateLimitReset, hXRateLimitResetAfter, hXRateLimitResource,
		hXRateLimitLimit2, hXRateLimitRemaining2, hXRateLimitReset2,
	} {
		if c := textproto.CanonicalMIMEHeaderKey(name); c != name {
			t.Errorf("header name %q is not canonical: want %q", name, c)
		}
	}
}
