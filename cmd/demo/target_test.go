package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
)

// An apiRecorder stands in for a real API behind -target: it records when
// each request arrived, per tenant, and answers what answer says.
type apiRecorder struct {
	answer func(tenant string, n, seq int) int // the status for the seq-th request of tenant (from 1) for item n

	mu       sync.Mutex
	arrivals map[string][]time.Time
	statuses map[string][]int
	served   map[string]map[int]int // tenant → item → 2xx answers
	bad      []string               // requests that broke the protocol
}

func startRecorder(t *testing.T, answer func(tenant string, n, seq int) int) (*apiRecorder, string) {
	t.Helper()
	a := &apiRecorder{answer: answer, arrivals: map[string][]time.Time{}, statuses: map[string][]int{}, served: map[string]map[int]int{}}
	srv := httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(srv.Close)
	return a, srv.URL
}

func (a *apiRecorder) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	var tenant string
	var n int
	_, err := fmt.Sscanf(strings.ReplaceAll(r.URL.Path, "/", " "), " tenants %s items %d", &tenant, &n)
	a.mu.Lock()
	if err != nil || r.Method != http.MethodGet || r.Header.Get("X-Tenant") != tenant {
		a.bad = append(a.bad, fmt.Sprintf("%s %s X-Tenant %q", r.Method, r.URL.Path, r.Header.Get("X-Tenant")))
		a.mu.Unlock()
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	a.arrivals[tenant] = append(a.arrivals[tenant], at)
	status := a.answer(tenant, n, len(a.arrivals[tenant]))
	a.statuses[tenant] = append(a.statuses[tenant], status)
	if status < 300 {
		if a.served[tenant] == nil {
			a.served[tenant] = map[int]int{}
		}
		a.served[tenant][n]++
	}
	a.mu.Unlock()
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(status)
}

// checkServed checks that every item of every tenant was served once.
func (a *apiRecorder) checkServed(t *testing.T, tenants, jobs int, except map[string]int) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.bad) > 0 {
		t.Errorf("requests that break the protocol (GET /tenants/<t>/items/<n> with X-Tenant: <t>): %q", a.bad)
	}
	for i := 1; i <= tenants; i++ {
		name := "tenant-" + strconv.Itoa(i)
		for n := 1; n <= jobs; n++ {
			if want := 1 - min(except[name+"/"+strconv.Itoa(n)], 1); a.served[name][n] != want {
				t.Errorf("%s item %d served %d times, want %d", name, n, a.served[name][n], want)
			}
		}
	}
}

func okAnswer(string, int, int) int { return http.StatusOK }

// TestTarget: against an external API the arrivals per tenant conform to
// the limit, judged by the reference checker.
func TestTarget(t *testing.T) {
	api, url := startRecorder(t, okAnswer)
	s := runJSON(t, exitOK, "-target", url, "-tenants", "3", "-jobs", "40", "-rate", "20", "-burst", "2")
	checkSynced(t, s, 3, 40, 20)
	if s.RateSource != "client" || s.Target != url {
		t.Errorf("summary: rate source %q, target %q; want client, %s", s.RateSource, s.Target, url)
	}
	api.checkServed(t, 3, 40, nil)
	// Arrivals lag the starts the dispatcher paced by a varying delay; the
	// checker forgives as much of it as the mock API does. Without the
	// limiter the first 40 requests would arrive at once.
	lim := withJitterAllowance(bucket.PerSecond(20).WithBurst(2))
	api.mu.Lock()
	defer api.mu.Unlock()
	for tenant, times := range api.arrivals {
		if err := backendtest.Check(lim, starts(times)); err != nil {
			t.Errorf("%s: arrivals at the API: %v", tenant, err)
		}
	}
}

func starts(times []time.Time) []backendtest.Start {
	out := make([]backendtest.Start, len(times))
	for i, at := range times {
		out[i] = backendtest.Start{At: at.UnixNano(), Cost: 1}
	}
	return out
}

// TestTargetRetryAfter: a 429 with Retry-After pauses that tenant only, and
// its item is synced after the pause.
func TestTargetRetryAfter(t *testing.T) {
	api, url := startRecorder(t, func(tenant string, _, seq int) int {
		if tenant == "tenant-2" && seq == 5 {
			return http.StatusTooManyRequests
		}
		return http.StatusOK
	})
	s := runJSON(t, exitOK, "-target", url, "-tenants", "2", "-jobs", "40", "-rate", "20")
	if s.Rejected != 1 || s.OK != 80 || s.Failed != 0 || s.Tenants[1].Rejected != 1 || s.Tenants[1].Retries < 1 {
		t.Errorf("summary: ok %d, failed %d, 429s %d (tenant-2: %d, retries %d); want 80, 0, 1 (1, ≥ 1)",
			s.OK, s.Failed, s.Rejected, s.Tenants[1].Rejected, s.Tenants[1].Retries)
	}
	api.checkServed(t, 2, 40, nil)
	api.mu.Lock()
	defer api.mu.Unlock()
	paused := api.arrivals["tenant-2"][4]
	if next := api.arrivals["tenant-2"][5]; next.Sub(paused) < time.Second {
		t.Errorf("tenant-2 sent again %v after a 429 with Retry-After: 1", next.Sub(paused))
	}
	var during int
	for _, at := range api.arrivals["tenant-1"] {
		if at.After(paused) && at.Before(paused.Add(time.Second)) {
			during++
		}
	}
	if during < 10 {
		t.Errorf("tenant-1 sent %d requests during tenant-2's pause of 1s, want about 20: a paused tenant holds up the others", during)
	}
}

// TestTargetFailures: a 503 is retried, a 404 fails its item (only) and
// the exit status.
func TestTargetFailures(t *testing.T) {
	api, url := startRecorder(t, func(tenant string, n, seq int) int {
		switch {
		case tenant == "tenant-1" && n == 3:
			return http.StatusNotFound
		case tenant == "tenant-2" && seq == 2:
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	s := runJSON(t, exitFailed, "-target", url, "-tenants", "2", "-jobs", "10", "-rate", "50")
	if s.OK != 19 || s.Failed != 1 || s.Tenants[0].Failed != 1 || s.Tenants[1].Retries < 1 {
		t.Errorf("summary: ok %d, failed %d (tenant-1: %d), tenant-2 retries %d; want 19, 1 (1), ≥ 1", s.OK, s.Failed, s.Tenants[0].Failed, s.Tenants[1].Retries)
	}
	if len(s.Errors) != 1 || !strings.Contains(s.Errors[0], "/tenants/tenant-1/items/3: 404") {
		t.Errorf("summary errors %q, want the 404 of tenant-1 item 3", s.Errors)
	}
	api.checkServed(t, 2, 10, map[string]int{"tenant-1/3": 1})
	api.mu.Lock()
	defer api.mu.Unlock()
	if n := len(api.arrivals["tenant-1"]); n != 10 {
		t.Errorf("tenant-1 sent %d requests, want 10: a 404 is not worth retrying", n)
	}
}
