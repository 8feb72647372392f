package main

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
)

func get(t *testing.T, url, tenant string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if tenant != "" {
		req.Header.Set("X-Tenant", tenant)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

// TestMockAPILimits: the mock lets burst + 1 requests through back to back
// (its jitter allowance at 1/s), then answers 429 with a Retry-After, per
// tenant.
func TestMockAPILimits(t *testing.T) {
	api, err := startMockAPI(bucket.PerSecond(1).WithBurst(2), nil)
	require.NoError(t, err)
	defer api.Close()
	item := func(tenant string, n int) string {
		return api.URL() + "/tenants/" + tenant + "/items/" + strconv.Itoa(n)
	}
	for n, want := range []int{200, 200, 200, 429, 429} {
		resp := get(t, item("a", n+1), "a")
		assert.Equal(t, want, resp.StatusCode, "request %d of tenant a at once", n+1)
		if want == 429 {
			assert.Equal(t, "1", resp.Header.Get("Retry-After"), "Retry-After of a 429, in seconds rounded up")
		}
	}
	assert.Equal(t, 200, get(t, item("b", 1), "b").StatusCode, "tenant b after tenant a ran dry")
	got := api.Arrivals()
	assert.Len(t, got["b"], 1, "arrivals of tenant b")
	if assert.Len(t, got["a"], 5, "arrivals of tenant a") {
		assert.Equal(t, 429, got["a"][3].Status, "status of tenant a's 4th arrival")
	}
}

func TestMockAPIQuota(t *testing.T) {
	api, err := startMockAPI(bucket.PerSecond(1000).WithBurst(10).WithQuota(3, time.Hour), nil)
	require.NoError(t, err)
	defer api.Close()
	for n := 1; n <= 4; n++ {
		resp := get(t, api.URL()+"/tenants/q/items/"+strconv.Itoa(n), "q")
		want := 200
		if n == 4 {
			want = 429
		}
		require.Equal(t, want, resp.StatusCode, "request %d under a quota of 3/1h", n)
		if n == 4 {
			ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			assert.GreaterOrEqual(t, ra, 3590, "Retry-After under an exhausted hourly quota")
			assert.LessOrEqual(t, ra, 3600, "Retry-After under an exhausted hourly quota")
		}
	}
}

func TestMockAPIProtocol(t *testing.T) {
	api, err := startMockAPI(bucket.PerSecond(100), nil)
	require.NoError(t, err)
	defer api.Close()
	tests := []struct {
		path, tenant string
		want         int
	}{
		{"/tenants/a/items/1", "", http.StatusBadRequest},
		{"/tenants/a/items/1", "b", http.StatusBadRequest},
		{"/tenants/a/items/zero", "a", http.StatusNotFound},
		{"/tenants/a/items/0", "a", http.StatusNotFound},
		{"/tenants/a", "a", http.StatusNotFound},
		{"/tenants/a/items/1", "a", http.StatusOK},
	}
	for _, tt := range tests {
		resp := get(t, api.URL()+tt.path, tt.tenant)
		assert.Equal(t, tt.want, resp.StatusCode, "GET %s with X-Tenant %q", tt.path, tt.tenant)
	}
	assert.Len(t, api.Arrivals()["a"], 1, "arrivals of tenant a, want only the one valid request")
}

func TestJitterAllowance(t *testing.T) {
	tests := []struct {
		lim  bucket.Limit
		want int64
	}{
		{bucket.PerSecond(1), 2},                   // 100ms is a tenth of an interval: one unit
		{bucket.PerSecond(10), 2},                  // one interval
		{bucket.PerSecond(20), 3},                  // two
		{bucket.PerSecond(30).WithBurst(5), 5 + 3}, // ⌈3.0⌉ (intervals round up to 33.333334ms)
		{bucket.PerSecond(1000), 101},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, withJitterAllowance(tt.lim).Burst, "withJitterAllowance(%v).Burst", tt.lim)
	}
}
