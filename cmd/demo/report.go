package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// A summary is the outcome of a run, printed as a table or as JSON.
type summary struct {
	Backend     string          `json:"backend"`
	Procs       int             `json:"procs"`
	Workers     int             `json:"workers"`
	Limit       string          `json:"limit"`    // per tenant, in bucket.Parse syntax
	Inflight    int             `json:"inflight"` // -inflight: each tenant's cap on requests in flight, 0 for none
	Target      string          `json:"target,omitempty"`
	Requests    int64           `json:"requests"` // HTTP requests sent, retries included
	OK          int64           `json:"ok"`       // items synced
	Rejected    int64           `json:"rejected"` // 429 answers received
	Retries     int64           `json:"retries"`
	Failed      int64           `json:"failed"`    // items that finally failed
	Cancelled   int64           `json:"cancelled"` // items not synced because of an interrupt
	OverCap     int             `json:"over_cap"`  // tenants the mock saw with more than -inflight requests in flight
	ElapsedS    float64         `json:"elapsed_s"`
	Interrupted bool            `json:"interrupted"`
	RateSource  string          `json:"rate_source"` // "api": arrivals the mock recorded; "client": when requests were sent
	Errors      []string        `json:"errors,omitempty"`
	Tenants     []tenantSummary `json:"tenants"`
	Learn       *learnSummary   `json:"learn,omitempty"` // -learn's figures
}

type tenantSummary struct {
	Tenant    string  `json:"tenant"`
	Requests  int64   `json:"requests"`
	OK        int64   `json:"ok"`
	Rejected  int64   `json:"rejected"`
	Retries   int64   `json:"retries"`
	Failed    int64   `json:"failed"`
	Cancelled int64   `json:"cancelled"`
	Rate      float64 `json:"rate"`  // observed requests/s, see observedRate
	Limit     float64 `json:"limit"` // allowed requests/s
	WaitP50Ms float64 `json:"wait_p50_ms"`
	WaitP99Ms float64 `json:"wait_p99_ms"`
	Throttled int64   `json:"throttled"` // admissions the dispatcher's bucket refused
	Late      int64   `json:"late"`      // admissions given back because the job reached a worker late
	// PeakInflight is the most requests of the tenant the mock API had
	// in flight at once (0 against a -target, where it is not known).
	PeakInflight int `json:"peak_inflight"`
	// Learn is the tenant's -learn figures.
	Learn *tenantLearn `json:"learn,omitempty"`
}

// summarize reads the tally. arrivals are what the mock API recorded, and
// peak the most requests of a tenant it had in flight at once; both nil
// against a -target: then rates are measured from when requests were sent.
func summarize(cfg *config, t *tally, arrivals map[string][]arrival, peak func(tenant string) int, elapsed time.Duration, interrupted bool) summary {
	s := summary{
		Backend: cfg.backend, Procs: cfg.procs, Workers: cfg.workers, Limit: cfg.limit.String(), Inflight: cfg.inflight,
		Target: cfg.target, ElapsedS: elapsed.Seconds(), Interrupted: interrupted, RateSource: "api",
	}
	if arrivals == nil {
		s.RateSource = "client"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s.Errors = slices.Clone(t.errs)
	limit := float64(cfg.limit.Rate) / cfg.limit.Period.Seconds()
	for _, name := range t.order {
		tt := t.tenants[name]
		times := tt.sends
		if arrivals != nil {
			times = arrivalTimes(arrivals[name])
		}
		ts := tenantSummary{
			Tenant: name, Requests: tt.requests, OK: tt.ok, Rejected: tt.rejected, Retries: tt.retries,
			Failed: tt.failed, Cancelled: tt.cancelled, Rate: observedRate(times, cfg.burst), Limit: limit,
			WaitP50Ms: ms(tt.waitP50), WaitP99Ms: ms(tt.waitP99), Throttled: tt.throttled, Late: tt.late,
		}
		if peak != nil {
			ts.PeakInflight = peak(name)
		}
		if cfg.inflight > 0 && ts.PeakInflight > cfg.inflight {
			s.OverCap++
		}
		s.Tenants = append(s.Tenants, ts)
		s.Requests += ts.Requests
		s.OK += ts.OK
		s.Rejected += ts.Rejected
		s.Retries += ts.Retries
		s.Failed += ts.Failed
		s.Cancelled += ts.Cancelled
	}
	if cfg.learn {
		summarizeLearn(cfg, t, arrivals, &s)
	}
	return s
}

func arrivalTimes(as []arrival) []time.Duration {
	out := make([]time.Duration, len(as))
	for i, a := range as {
		out[i] = a.At
	}
	return out
}

// observedRate is the rate a tenant's requests came at once its burst was
// spent: (n − burst) / (last − first) for n requests. A bucket lets burst
// requests through back-to-back and then one per interval, so with n >
// burst this is the limit exactly when the requests were paced exactly;
// counting the burst in would overstate short runs. 0 if n ≤ burst.
func observedRate(times []time.Duration, burst int) float64 {
	if len(times) <= burst {
		return 0
	}
	return rateOver(len(times), slices.Min(times), slices.Max(times), burst)
}

// rateOver is observedRate of n requests from first to last.
func rateOver(n int, first, last time.Duration, burst int) float64 {
	if n <= burst || last <= first {
		return 0
	}
	return float64(n-burst) / (last - first).Seconds()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func writeJSON(w io.Writer, s summary) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// writeTable prints the summary for people.
func writeTable(w io.Writer, s summary) {
	if s.Learn != nil {
		writeLearnTable(w, s)
		return
	}
	width := len("tenant")
	for _, t := range s.Tenants {
		width = max(width, len(t.Tenant))
	}
	// The peak in flight has a column under a cap, seen by the mock.
	showPeak := s.Inflight > 0 && s.RateSource == "api"
	row := func(name, requests, ok, failed, rejected, retries, rate, of, p50, p99, peak string) {
		line := fmt.Sprintf("%-*s %9s %7s %7s %6s %8s %8s %9s %9s %9s", width, name, requests, ok, failed, rejected, retries, rate, of, p50, p99)
		if showPeak {
			line += fmt.Sprintf(" %6s", peak)
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	fmt.Fprintln(w)
	row("tenant", "requests", "ok", "failed", "429s", "retries", "rate/s", "of limit", "wait p50", "wait p99", "peak")
	maxPeak := 0
	for _, t := range s.Tenants {
		peak := num(int64(t.PeakInflight))
		if t.PeakInflight > s.Inflight {
			peak += "!"
		}
		maxPeak = max(maxPeak, t.PeakInflight)
		row(t.Tenant, num(t.Requests), num(t.OK), num(t.Failed), num(t.Rejected), num(t.Retries),
			fmt.Sprintf("%.2f", t.Rate), fmt.Sprintf("%.1f%%", 100*t.Rate/t.Limit),
			fmtMs(t.WaitP50Ms), fmtMs(t.WaitP99Ms), peak)
	}
	row("all", num(s.Requests), num(s.OK), num(s.Failed), num(s.Rejected), num(s.Retries), "", "", "", "", num(int64(maxPeak)))
	fmt.Fprintln(w)
	writeFooter(w, s)
}

func writeFooter(w io.Writer, s summary) {
	total := s.OK + s.Failed + s.Cancelled
	fmt.Fprintf(w, "%d of %d items synced in %.1fs: %d failed", s.OK, total, s.ElapsedS, s.Failed)
	if s.Cancelled > 0 {
		fmt.Fprintf(w, ", %d not synced (interrupted)", s.Cancelled)
	}
	fmt.Fprintf(w, ", %d answered 429.\n", s.Rejected)
	if s.OverCap > 0 {
		fmt.Fprintf(w, "FAILED: the mock API saw %s with more than %d requests in flight (peak marked !).\n",
			plural(s.OverCap, "tenant", "tenants"), s.Inflight)
	}
	for _, e := range s.Errors {
		fmt.Fprintf(w, "  error: %s\n", oneLine(e))
	}
	source := "arrival at the API"
	if s.RateSource == "client" {
		source = "request sent"
	}
	fmt.Fprintf(w, "rate: requests/s after the burst, (requests − burst) / (last − first %s)\n", source)
	wait := "wait: admission wait, from Submit to the request's start (dispatcher Stats)"
	if s.Procs > 1 {
		wait = "wait: admission wait, Submit to start (dispatcher Stats; the largest of the processes')"
	}
	fmt.Fprintln(w, wait)
	if s.Inflight > 0 && s.RateSource == "api" {
		fmt.Fprintf(w, "peak: the most requests of a tenant in flight at once at the mock API (cap: -inflight %d)\n", s.Inflight)
	}
}

func num(n int64) string { return fmt.Sprint(n) }

func fmtMs(v float64) string {
	d := time.Duration(v * float64(time.Millisecond))
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return fmt.Sprintf("%.1fms", v)
}

func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
