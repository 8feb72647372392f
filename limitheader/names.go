package limitheader

import "net/http"

// The header names read, in the canonical form net/http keeps them in
// (textproto.CanonicalMIMEHeaderKey: "RateLimit" is "Ratelimit"), so that
// they are looked up in the map directly: Header.Get would canonicalize
// them again at every lookup, a third of what an answer without these
// headers costs to read.
const (
	hDate       = "Date"
	hRetryAfter = "Retry-After"

	hRateLimit       = "Ratelimit"        // IETF, drafts -07 to -11
	hRateLimitPolicy = "Ratelimit-Policy" // IETF, drafts -03 to -11

	hRateLimitLimit     = "Ratelimit-Limit" // drafts -00 to -06
	hRateLimitRemaining = "Ratelimit-Remaining"
	hRateLimitReset     = "Ratelimit-Reset"

	hXRateLimitLimit      = "X-Ratelimit-Limit" // GitHub, Discord, Envoy
	hXRateLimitRemaining  = "X-Ratelimit-Remaining"
	hXRateLimitReset      = "X-Ratelimit-Reset"
	hXRateLimitResetAfter = "X-Ratelimit-Reset-After" // Discord
	hXRateLimitResource   = "X-Ratelimit-Resource"    // GitHub
	hXRateLimitLimit2     = "X-Rate-Limit-Limit"      // Twitter
	hXRateLimitRemaining2 = "X-Rate-Limit-Remaining"
	hXRateLimitReset2     = "X-Rate-Limit-Reset"
)

// get returns the first value of the header named name, which must be
// canonical: h.Get(name) without canonicalizing name again.
func get(h http.Header, name string) string {
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}
