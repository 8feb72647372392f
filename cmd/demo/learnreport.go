package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// learnSummary is what -learn adds to the summary: how much of what the
// hidden limit allowed the tenants used, and how it went in each step.
type learnSummary struct {
	Headers string `json:"headers,omitempty"` // the mock API's -api-headers; "" against a -target
	Ceiling int    `json:"ceiling"`           // -rate, requests/s
	Floor   int    `json:"floor"`             // -floor, requests/s
	// Goodput is the answers 200 the tenants had (as the mock API
	// counted them; against a -target, items synced), and Allowed what
	// the hidden limit allowed them while they were sending: its integral
	// over each tenant's span (see tenantSpan); 0 against a -target, where
	// the limit is not known.
	Goodput     int64         `json:"goodput"`
	Allowed     float64       `json:"allowed"`
	GoodputPct  float64       `json:"goodput_pct"`  // Goodput / Allowed, %
	RejectedPct float64       `json:"rejected_pct"` // 429s, % of requests
	Steps       []stepSummary `json:"steps,omitempty"`
}

// tenantLearn is one tenant's part of learnSummary.
type tenantLearn struct {
	Goodput     float64 `json:"goodput"`      // answers 200 per second of its span (see tenantSpan)
	GoodputPct  float64 `json:"goodput_pct"`  // of what the hidden limit allowed in that time (0 against a -target)
	RejectedPct float64 `json:"rejected_pct"` // 429s, % of its requests
	Learned     float64 `json:"learned"`      // requests/s its bucket applied at the end (0: none known)
}

// A stepSummary is one step of the hidden limit, over the part of it the
// tenants were sending in.
type stepSummary struct {
	AtS        float64 `json:"at_s"`        // when it began, seconds since the API started
	Limit      int     `json:"limit"`       // requests/s per tenant
	Goodput    float64 `json:"goodput"`     // answers 200 per second per tenant
	GoodputPct float64 `json:"goodput_pct"` // of the limit
	Learned    float64 `json:"learned"`     // the mean of the learned rates sampled in it (0: none)
	Rejected   int64   `json:"rejected"`    // 429s in it
}

// summarizeLearn fills in s's -learn figures from t (t.mu held) and the
// mock API's arrivals (nil against a -target).
func summarizeLearn(cfg *config, t *tally, arrivals map[string][]arrival, s *summary) {
	ls := &learnSummary{Headers: string(cfg.family), Ceiling: cfg.rate, Floor: cfg.floor}
	steps := make([]stepTotals, len(cfg.hidden))
	for i := range s.Tenants {
		ts := &s.Tenants[i]
		tt := t.tenants[ts.Tenant]
		tl := &tenantLearn{Learned: perSecond(tt.interval)}
		if tl.Learned == 0 {
			tl.Learned = tt.latest.rate
		}
		if ts.Requests > 0 {
			tl.RejectedPct = 100 * float64(ts.Rejected) / float64(ts.Requests)
		}
		ok, first, last := ts.OK, tt.first, tt.last // against a -target: as sent
		if arrivals != nil {
			ok, first, last = answered(arrivals[ts.Tenant])
		}
		from, to := tenantSpan(cfg, first, last, tl.Learned)
		if ok > 0 && to > from {
			tl.Goodput = float64(ok) / (to - from).Seconds()
		}
		if cfg.hidden != nil && ok > 0 {
			allow := limitmock.Allowed(cfg.hidden, from, to)
			tl.GoodputPct = 100 * float64(ok) / allow
			ls.Allowed += allow
			for k := range steps {
				steps[k].add(cfg.hidden, k, arrivals[ts.Tenant], tt.samples, from, to)
			}
		}
		ls.Goodput += ok
		ts.Learn = tl
	}
	if ls.Allowed > 0 {
		ls.GoodputPct = 100 * float64(ls.Goodput) / ls.Allowed
	}
	if s.Requests > 0 {
		ls.RejectedPct = 100 * float64(s.Rejected) / float64(s.Requests)
	}
	for k, st := range steps {
		if st.seconds > 0 {
			ls.Steps = append(ls.Steps, st.summary(cfg.hidden[k]))
		}
	}
	s.Learn = ls
}

// tenantSpan returns the time a tenant was sending, whose first request
// came at first and last at last: to one interval of the hidden limit after
// the last (against a -target, of the rate it learned, if any), the time
// the last one takes at that rate. So a client that kept to the limit
// exactly has a goodput of 100% of it, and every request falls in a step
// of it.
func tenantSpan(cfg *config, first, last time.Duration, learned float64) (time.Duration, time.Duration) {
	rate := learned
	if cfg.hidden != nil {
		rate = float64(limitAt(cfg.hidden, last))
	}
	if rate > 0 {
		last += time.Duration(float64(time.Second) / rate)
	}
	return first, last
}

// answered returns the answers 200 among as, and when the first and the
// last of as arrived.
func answered(as []arrival) (ok int64, first, last time.Duration) {
	if len(as) == 0 {
		return 0, 0, 0
	}
	first, last = as[0].At, as[0].At
	for _, a := range as {
		if a.Status == http.StatusOK {
			ok++
		}
		first, last = min(first, a.At), max(last, a.At)
	}
	return ok, first, last
}

// stepTotals add up one step over the tenants.
type stepTotals struct {
	ok, rejected int64
	seconds      float64 // the tenants' time sending in it
	allowed      float64 // what the limit allowed them in that time
	learned      float64 // the sum of the learned rates sampled in it
	samples      int
}

// add adds one tenant's part of step k of schedule: its answers as and
// learned-rate samples in the step, while it was sending, from first
// until last.
func (st *stepTotals) add(schedule []limitmock.Step, k int, as []arrival, samples []learnedSample, first, last time.Duration) {
	from, to := schedule[k].At, time.Duration(math.MaxInt64)
	if k+1 < len(schedule) {
		to = schedule[k+1].At
	}
	lo, hi := max(from, first), min(to, last)
	if hi <= lo {
		return
	}
	st.seconds += (hi - lo).Seconds()
	st.allowed += float64(schedule[k].Rate) * (hi - lo).Seconds()
	for _, a := range as {
		switch {
		case a.At < from || a.At >= to:
		case a.Status == http.StatusOK:
			st.ok++
		case a.Status == http.StatusTooManyRequests:
			st.rejected++
		}
	}
	for _, s := range samples {
		if s.at >= lo && s.at < hi {
			st.learned += s.rate
			st.samples++
		}
	}
}

func (st *stepTotals) summary(step limitmock.Step) stepSummary {
	ss := stepSummary{AtS: step.At.Seconds(), Limit: step.Rate, Rejected: st.rejected,
		Goodput: float64(st.ok) / st.seconds, GoodputPct: 100 * float64(st.ok) / st.allowed}
	if st.samples > 0 {
		ss.Learned = st.learned / float64(st.samples)
	}
	return ss
}

// writeLearnTable prints a -learn summary for people: per tenant its
// goodput, 429s and learned rate, then the hidden limit's steps.
func writeLearnTable(w io.Writer, s summary) {
	width := len("tenant")
	for _, t := range s.Tenants {
		width = max(width, len(t.Tenant))
	}
	ls := s.Learn
	known := ls.Allowed > 0 // the hidden limit, against the mock
	row := func(name, requests, ok, failed, rejected, rejectedPct, retries, goodput, of, learned string) {
		if !known {
			of = ""
		}
		line := fmt.Sprintf("%-*s %9s %7s %7s %6s %7s %8s %10s %9s %10s", width, name, requests, ok, failed, rejected, rejectedPct, retries, goodput, of, learned)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	fmt.Fprintln(w)
	row("tenant", "requests", "ok", "failed", "429s", "429 %", "retries", "goodput/s", "of limit", "learned/s")
	var goodput float64
	for _, t := range s.Tenants {
		goodput += t.Learn.Goodput
		learned := "-"
		if t.Learn.Learned > 0 {
			learned = fmt.Sprintf("%.1f", t.Learn.Learned)
		}
		row(t.Tenant, num(t.Requests), num(t.OK), num(t.Failed), num(t.Rejected), pct(t.Learn.RejectedPct, 2), num(t.Retries),
			fmt.Sprintf("%.2f", t.Learn.Goodput), pct(t.Learn.GoodputPct, 1), learned)
	}
	row("all", num(s.Requests), num(s.OK), num(s.Failed), num(s.Rejected), pct(ls.RejectedPct, 2), num(s.Retries),
		fmt.Sprintf("%.2f", goodput), pct(ls.GoodputPct, 1), "")
	if len(ls.Steps) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "%-12s %7s %10s %9s %10s %6s\n", "hidden limit", "from", "goodput/s", "of limit", "learned/s", "429s")
		for _, st := range ls.Steps {
			learned := "-"
			if st.Learned > 0 {
				learned = fmt.Sprintf("%.1f", st.Learned)
			}
			fmt.Fprintf(w, "%-12s %7s %10.2f %9s %10s %6d\n", fmt.Sprintf("%d/s", st.Limit),
				fmt.Sprintf("%.1fs", st.AtS), st.Goodput, pct(st.GoodputPct, 1), learned, st.Rejected)
		}
	}
	fmt.Fprintln(w)
	writeLearnFooter(w, s)
}

func writeLearnFooter(w io.Writer, s summary) {
	ls := s.Learn
	total := s.OK + s.Failed + s.Cancelled
	fmt.Fprintf(w, "%d of %d items synced in %.1fs: %d failed", s.OK, total, s.ElapsedS, s.Failed)
	if s.Cancelled > 0 {
		fmt.Fprintf(w, ", %d not synced (interrupted)", s.Cancelled)
	}
	fmt.Fprintf(w, "; %d answered 429 (%s of requests)", s.Rejected, pct(ls.RejectedPct, 2))
	if ls.Allowed > 0 {
		fmt.Fprintf(w, "; goodput %s of what the hidden limit allowed", pct(ls.GoodputPct, 1))
	}
	fmt.Fprintln(w, ".")
	for _, e := range s.Errors {
		fmt.Fprintf(w, "  error: %s\n", oneLine(e))
	}
	if ls.Allowed > 0 {
		fmt.Fprintln(w, "goodput: answers 200 per second, from the tenant's first request at the API to one interval of the limit after its last")
		fmt.Fprintln(w, "of limit: those answers over what the hidden limit allowed in that time")
	} else {
		fmt.Fprintln(w, "goodput: items synced per second, from the tenant's first request sent to one learned interval after its last")
	}
	fmt.Fprintf(w, "learned: the rate the tenant's bucket applied at the end, from %d/s (-floor) to %d/s (-rate)", ls.Floor, ls.Ceiling)
	if len(ls.Steps) > 0 {
		fmt.Fprint(w, "; in a step, the mean of the rates sampled every 100ms")
	}
	fmt.Fprintln(w)
}

// pct formats a percentage with prec decimals.
func pct(v float64, prec int) string { return fmt.Sprintf("%.*f%%", prec, v) }

// sortedSamples returns samples in time order.
func sortedSamples(samples []learnedSample) []learnedSample {
	out := slices.Clone(samples)
	slices.SortStableFunc(out, func(a, b learnedSample) int { return cmp.Compare(a.at, b.at) })
	return out
}
