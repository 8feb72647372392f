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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	assert.Empty(t, a.bad, "requests that break the protocol (GET /tenants/<t>/items/<n> with X-Tenant: <t>)")
	for i := 1; i <= tenants; i++ {
		name := "tenant-" + strconv.Itoa(i)
		for n := 1; n <= jobs; n++ {
			want := 1 - min(except[name+"/"+strconv.Itoa(n)], 1)
			assert.Equal(t, want, a.served[name][n], "times %s item %d was served", name, n)
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
	assert.Equal(t, "client", s.RateSource, "rate source")
	assert.Equal(t, url, s.Target, "target")
	api.checkServed(t, 3, 40, nil)
	// Arrivals lag the starts the dispatcher paced by a varying delay; the
	// checker forgives as much of it as the mock API does. Without the
	// limiter the first 40 requests would arrive at once.
	lim := withJitterAllowance(bucket.PerSecond(20).WithBurst(2))
	api.mu.Lock()
	defer api.mu.Unlock()
	for tenant, times := range api.arrivals {
		assert.NoError(t, backendtest.Check(lim, starts(times)), "%s: arrivals at the API", tenant)
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
	assert.EqualValues(t, 80, s.OK, "items synced")
	assert.Zero(t, s.Failed, "items failed")
	assert.EqualValues(t, 1, s.Rejected, "429s")
	require.Len(t, s.Tenants, 2, "tenants in the summary")
	assert.EqualValues(t, 1, s.Tenants[1].Rejected, "tenant-2's 429s")
	assert.Positive(t, s.Tenants[1].Retries, "tenant-2's retries")
	api.checkServed(t, 2, 40, nil)
	api.mu.Lock()
	defer api.mu.Unlock()
	paused := api.arrivals["tenant-2"][4]
	assert.GreaterOrEqual(t, api.arrivals["tenant-2"][5].Sub(paused), time.Second, "time before tenant-2 sent again after a 429 with Retry-After: 1")
	var during int
	for _, at := range api.arrivals["tenant-1"] {
		if at.After(paused) && at.Before(paused.Add(time.Second)) {
			during++
		}
	}
	assert.GreaterOrEqual(t, during, 10, "requests tenant-1 sent during tenant-2's pause of 1s, want about 20: a paused tenant holds up the others")
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
	assert.EqualValues(t, 19, s.OK, "items synced")
	assert.EqualValues(t, 1, s.Failed, "items failed")
	require.Len(t, s.Tenants, 2, "tenants in the summary")
	assert.EqualValues(t, 1, s.Tenants[0].Failed, "tenant-1's items failed")
	assert.Positive(t, s.Tenants[1].Retries, "tenant-2's retries")
	if assert.Len(t, s.Errors, 1, "summary errors, want the 404 of tenant-1 item 3") {
		assert.Contains(t, s.Errors[0], "/tenants/tenant-1/items/3: 404")
	}
	api.checkServed(t, 2, 10, map[string]int{"tenant-1/3": 1})
	api.mu.Lock()
	defer api.mu.Unlock()
	assert.Len(t, api.arrivals["tenant-1"], 10, "requests tenant-1 sent: a 404 is not worth retrying")
}
