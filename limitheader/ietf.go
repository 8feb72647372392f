package limitheader

import (
	"net/http"
	"time"

	"github.com/dunglas/httpsfv"
)

// parsePolicyField reads the RateLimit-Policy field, a structured List of
// Items in one of two forms: a named policy (-08 to -11),
// `"burst";q=100;w=60;qu="requests"`, whose q is required and w optional;
// or a quota (-03 to -07), `100;w=60`, whose w the drafts require but
// which is read without one too (its window is then unknown). named
// reports whether an item of the first form was read.
func parsePolicyField(h http.Header) (policies []Policy, named bool) {
	vs := h[hRateLimitPolicy]
	if len(vs) == 0 {
		return nil, false
	}
	list, err := httpsfv.UnmarshalList(vs)
	if err != nil {
		return nil, false
	}
	for _, m := range list {
		if len(policies) == MaxItems {
			break
		}
		item, ok := m.(httpsfv.Item)
		if !ok {
			continue
		}
		p := Policy{Unit: "requests"}
		if q, ok := sfUnits(item.Value); ok {
			p.Quota = q
		} else if name, ok := sfName(item.Value); ok {
			v, _ := item.Params.Get("q")
			if p.Quota, ok = sfUnits(v); !ok {
				continue
			}
			p.Name = name
			if v, ok := item.Params.Get("qu"); ok {
				if p.Unit, ok = sfName(v); !ok || p.Unit == "" {
					continue
				}
			}
		} else {
			continue
		}
		if v, ok := item.Params.Get("w"); ok {
			if p.Window, ok = sfWindow(v); !ok {
				continue
			}
		}
		named = named || p.Name != ""
		policies = append(policies, p)
	}
	return policies, named
}

// parseIETF reads the RateLimit field into s: a List of named service
// limits (-08 to -11), `"burst";r=50;t=30`, or else a Dictionary (-07),
// `limit=100, remaining=50, reset=30`. It reports whether the answer is
// of the IETF family: the field held a valid entry, or policies holds a
// named policy; s gets policies when it is.
func parseIETF(h http.Header, s *Signal, policies []Policy, named bool) bool {
	found := named
	if vs := h[hRateLimit]; len(vs) > 0 {
		if list, err := httpsfv.UnmarshalList(vs); err == nil {
			for _, m := range list {
				if len(s.Remaining) == MaxItems {
					break
				}
				item, ok := m.(httpsfv.Item)
				if !ok {
					continue
				}
				var r Remaining
				if r.Policy, ok = sfName(item.Value); !ok {
					continue
				}
				if v, ok := item.Params.Get("r"); ok {
					r.Units, r.HasUnits = sfUnits(v)
				}
				if v, ok := item.Params.Get("t"); ok {
					r.Reset, r.HasReset = sfSeconds(v)
				}
				if r.HasUnits || r.HasReset {
					s.Remaining = append(s.Remaining, r)
				}
			}
		} else if dict, err := httpsfv.UnmarshalDictionary(vs); err == nil {
			var r Remaining
			if v, ok := dictValue(dict, "remaining"); ok {
				r.Units, r.HasUnits = sfUnits(v)
			}
			if v, ok := dictValue(dict, "reset"); ok {
				r.Reset, r.HasReset = sfSeconds(v)
			}
			if r.HasUnits || r.HasReset {
				s.Remaining = append(s.Remaining, r)
			}
			if v, ok := dictValue(dict, "limit"); ok {
				if limit, ok := sfUnits(v); ok {
					policies, found = withLimit(policies, limit), true
				}
			}
		}
		found = found || len(s.Remaining) > 0
	}
	if found {
		s.Policies = policies
	}
	return found
}

// dictValue returns the bare value of the dictionary member key when it
// is an Item.
func dictValue(d *httpsfv.Dictionary, key string) (any, bool) {
	m, ok := d.Get(key)
	if !ok {
		return nil, false
	}
	item, ok := m.(httpsfv.Item)
	if !ok {
		return nil, false
	}
	return item.Value, true
}

// sfName reads a policy's name: a String, or a Token (the drafts say
// String; some servers send a token, and nothing else could be meant).
func sfName(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case httpsfv.Token:
		return string(v), true
	}
	return "", false
}

// sfWindow reads a policy's w: an Integer of seconds, at least 1.
func sfWindow(v any) (d time.Duration, ok bool) {
	n, ok := v.(int64)
	if !ok || n < 1 {
		return 0, false
	}
	return clampDelay(n, 0), true
}
