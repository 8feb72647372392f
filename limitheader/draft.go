package limitheader

import (
	"net/http"
	"time"

	"github.com/dunglas/httpsfv"
)

// parseDraft reads the fields of drafts -00 to -06 into s: RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset, with policies (RateLimit-Policy
// with integer items). It reports whether any held a valid value.
//
// RateLimit-Limit is a number, `100`, or in drafts -00 to -02 a list that
// carries the policies too (see parseLimit). RateLimit-Reset is delay
// seconds in the drafts and a Unix time from GitLab, told apart by
// magnitude.
func parseDraft(h http.Header, now time.Time, s *Signal, policies []Policy) bool {
	var r Remaining
	if v := get(h, hRateLimitRemaining); v != "" {
		r.Units, r.HasUnits = parseUnits(v)
	}
	if v := get(h, hRateLimitReset); v != "" {
		r.Reset, r.HasReset = parseReset(v, now)
	}
	found := r.HasUnits || r.HasReset
	if found {
		s.Remaining = append(s.Remaining, r)
	}
	if limit, ok, more := parseLimit(h[hRateLimitLimit], policies); ok {
		policies = withLimit(more, limit)
	}
	if found = found || len(policies) > 0; found {
		s.Policies = policies
	}
	return found
}

// parseLimit reads a limit header's values: a number, `100`, or, as
// drafts -00 to -02 give RateLimit-Limit and Envoy X-RateLimit-Limit, a
// List whose first item is the limit, `100, 100;w=60`; every item of the
// list with a valid w is appended to policies, as a policy. ok is false
// when vs holds no limit.
func parseLimit(vs []string, policies []Policy) (limit int64, ok bool, _ []Policy) {
	if len(vs) == 0 {
		return 0, false, policies
	}
	if len(vs) == 1 {
		if limit, ok := parseUnits(vs[0]); ok {
			return limit, true, policies
		}
	}
	list, err := httpsfv.UnmarshalList(vs)
	if err != nil {
		return 0, false, policies
	}
	for i, m := range list {
		item, isItem := m.(httpsfv.Item)
		if !isItem {
			continue
		}
		q, valid := sfUnits(item.Value)
		if !valid {
			continue
		}
		if i == 0 {
			limit, ok = q, true
		}
		v, hasW := item.Params.Get("w")
		if !hasW || len(policies) == MaxItems {
			continue
		}
		if w, valid := sfWindow(v); valid {
			policies = append(policies, Policy{Quota: q, Window: w, Unit: "requests"})
		}
	}
	return limit, ok, policies
}
