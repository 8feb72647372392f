package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/dispatcher"
)

func TestObservedRate(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name  string
		times []time.Duration
		burst int
		want  float64
	}{
		{"none", nil, 1, 0},
		{"one", ms(5), 1, 0},
		{"paced 20/s", ms(0, 50, 100, 150, 200), 1, 20},
		{"unsorted", ms(150, 0, 200, 50, 100), 1, 20},
		{"burst of 3 then 20/s", ms(0, 0, 0, 50, 100, 150), 3, 20},
		{"all in the burst", ms(0, 0, 0), 3, 0},
		{"at one instant", ms(7, 7), 1, 0},
	}
	for _, tt := range tests {
		assert.InDelta(t, tt.want, observedRate(tt.times, tt.burst), 1e-9, "%s: observedRate(%v, %d)", tt.name, tt.times, tt.burst)
	}
}

// TestShare: the workers' shares cover every item of every tenant once,
// and each share starts with every tenant.
func TestShare(t *testing.T) {
	cfg := &config{tenants: 3, jobs: 10}
	for _, procs := range []int{1, 3, 4, 10, 12} {
		seen := map[item]int{}
		for w := range procs {
			items := share(cfg, w, procs)
			if len(items) > 0 {
				assert.Equal(t, []string{"tenant-1", "tenant-2"}, []string{items[0].tenant, items[1].tenant},
					"procs %d, worker %d: tenants of the first items, want them interleaved", procs, w)
			}
			for _, it := range items {
				seen[it]++
			}
		}
		for _, tenant := range cfg.tenantNames() {
			for n := 1; n <= cfg.jobs; n++ {
				assert.Equal(t, 1, seen[item{tenant, n}], "procs %d: shares holding %s item %d", procs, tenant, n)
			}
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, resultOK},
		{dispatcher.ErrClosed, resultCancelled},
		{fmt.Errorf("GET: %w", errors.New("context canceled")), resultFailed}, // a message is not a cancellation
		{fmt.Errorf("wrapped: %w", dispatcher.ErrClosed), resultCancelled},
		{errors.New("GET /tenants/a/items/1: 404 Not Found"), resultFailed},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, classify(tt.err), "classify(%v)", tt.err)
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	cfg, err := parseFlags(nil, nil)
	require.NoError(t, err)
	assert.Equal(t, "memory", cfg.backend, "default -backend")
	assert.Equal(t, 4, cfg.tenants, "default -tenants")
	assert.Equal(t, 100, cfg.jobs, "default -jobs")
	assert.Equal(t, 20, cfg.rate, "default -rate")
	assert.Equal(t, 1, cfg.burst, "default -burst")
	assert.Equal(t, 16, cfg.workers, "default -workers")
	assert.Equal(t, 1, cfg.procs, "default -procs")
	assert.Equal(t, "127.0.0.1:6379", cfg.redisAddr, "default -redis")
	assert.Equal(t, "20/s", cfg.limit.String(), "default limit")
	cfg, err = parseFlags([]string{"-rate", "5", "-burst", "3", "-quota", "500/1h, 5000/1d"}, nil)
	require.NoError(t, err)
	assert.Equal(t, "5/s burst=3 quota=500/h quota=5000/d", cfg.limit.String())
}

func TestWriteTable(t *testing.T) {
	var b strings.Builder
	writeTable(&b, summary{
		Backend: "memory", Procs: 1, Limit: "20/s", OK: 3, Requests: 4, Rejected: 1, RateSource: "api",
		Tenants: []tenantSummary{{Tenant: "tenant-1", Requests: 4, OK: 3, Rejected: 1, Rate: 19.5, Limit: 20, WaitP50Ms: 12.5, WaitP99Ms: 2500}},
	})
	for _, want := range []string{"tenant-1", "19.50", "97.5%", "12.5ms", "2.50s", "3 of 3 items synced", "1 answered 429"} {
		assert.Contains(t, b.String(), want)
	}
}

// TestProgressBars: on a terminal the progress is mpb bars, a bar per
// tenant with its count, the requests of its last second and its 429s.
func TestProgressBars(t *testing.T) {
	cfg, err := parseFlags([]string{"-tenants", "2", "-jobs", "1"}, nil)
	require.NoError(t, err)
	tl := newTally(cfg)
	now := time.Now()
	tl.request("tenant-1", now, http.StatusOK)
	tl.done("tenant-1", nil)
	tl.request("tenant-2", now, http.StatusTooManyRequests)
	tl.request("tenant-2", now, http.StatusOK)
	tl.done("tenant-2", nil)
	var b syncBuffer
	p := startProgress(cfg, tl, nil, &b, true)
	require.IsType(t, &bars{}, p, "startProgress on a terminal")
	p.stop()
	out := b.String()
	for _, want := range []string{"tenant-1", "tenant-2", "1/1", "req/s", "0 × 429", "1 × 429"} {
		assert.Contains(t, out, want, "bars output")
	}
	assert.GreaterOrEqual(t, tl.progress()[0].rate, 1.0, "tenant-1's rate over the last second, want its 1 request counted")
}

// syncBuffer is a bytes.Buffer safe for the bars' goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWorkerCommandHidesServer: a worker process is given the Redis
// address or PostgreSQL URL in its environment, never on its command
// line, where ps shows it (and a password in it) to every user.
func TestWorkerCommandHidesServer(t *testing.T) {
	for _, tc := range []struct{ backend, server string }{
		{"redis", "redis://:secret@127.0.0.1:6379/0"},
		{"postgres", "postgres://app:secret@127.0.0.1:5432/app"},
	} {
		cfg := &config{backend: tc.backend, redisAddr: tc.server, postgresURL: tc.server, quota: "none"}
		cmd := workerCommand(context.Background(), "demo", cfg, "http://127.0.0.1:1", workerID{0, 2}, io.Discard)
		assert.NotContains(t, strings.Join(cmd.Args, " "), "secret", "%s worker's command line", tc.backend)
		assert.Contains(t, cmd.Env, envServer+"="+tc.server, "%s worker's environment", tc.backend)
	}
}
