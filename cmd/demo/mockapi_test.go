package main

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
)

func get(t *testing.T, url, tenant string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tenant != "" {
		req.Header.Set("X-Tenant", tenant)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestMockAPILimits: the mock lets burst + 1 requests through back to back
// (its jitter allowance at 1/s), then answers 429 with a Retry-After, per
// tenant.
func TestMockAPILimits(t *testing.T) {
	api, err := startMockAPI(bucket.PerSecond(1).WithBurst(2))
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	item := func(tenant string, n int) string {
		return api.URL() + "/tenants/" + tenant + "/items/" + strconv.Itoa(n)
	}
	for n, want := range []int{200, 200, 200, 429, 429} {
		resp := get(t, item("a", n+1), "a")
		if resp.StatusCode != want {
			t.Errorf("request %d of tenant a at once: %s, want %d", n+1, resp.Status, want)
		}
		if want == 429 && resp.Header.Get("Retry-After") != "1" {
			t.Errorf("429 with Retry-After %q, want 1 (second, rounded up)", resp.Header.Get("Retry-After"))
		}
	}
	if resp := get(t, item("b", 1), "b"); resp.StatusCode != 200 {
		t.Errorf("tenant b after tenant a ran dry: %s, want 200", resp.Status)
	}
	if got := api.Arrivals(); len(got["a"]) != 5 || len(got["b"]) != 1 || got["a"][3].Status != 429 {
		t.Errorf("arrivals: a %v, b %v; want 5 for a (the 4th refused) and 1 for b", got["a"], got["b"])
	}
}

func TestMockAPIQuota(t *testing.T) {
	api, err := startMockAPI(bucket.PerSecond(1000).WithBurst(10).WithQuota(3, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	for n := 1; n <= 4; n++ {
		resp := get(t, api.URL()+"/tenants/q/items/"+strconv.Itoa(n), "q")
		want := 200
		if n == 4 {
			want = 429
		}
		if resp.StatusCode != want {
			t.Fatalf("request %d under a quota of 3/1h: %s, want %d", n, resp.Status, want)
		}
		if n == 4 {
			if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 3590 || ra > 3600 {
				t.Errorf("Retry-After %q under an exhausted hourly quota, want about 3600", resp.Header.Get("Retry-After"))
			}
		}
	}
}

func TestMockAPIProtocol(t *testing.T) {
	api, err := startMockAPI(bucket.PerSecond(100))
	if err != nil {
		t.Fatal(err)
	}
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
		if resp := get(t, api.URL()+tt.path, tt.tenant); resp.StatusCode != tt.want {
			t.Errorf("GET %s with X-Tenant %q: %s, want %d", tt.path, tt.tenant, resp.Status, tt.want)
		}
	}
	if got := api.Arrivals(); len(got["a"]) != 1 {
		t.Errorf("arrivals of tenant a: %v, want only the one valid request", got["a"])
	}
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
		if got := withJitterAllowance(tt.lim).Burst; got != tt.want {
			t.Errorf("withJitterAllowance(%v).Burst = %d, want %d", tt.lim, got, tt.want)
		}
	}
}
