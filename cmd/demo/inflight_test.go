package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/internal/pgtest"
	"github.com/leakybucket/leakybucket/internal/redistest"
)

// checkCapped checks a run with -inflight n against the mock: every item
// synced, no 429, each tenant's peak in flight at the mock exactly n (the
// cap reached, never passed), and its rate set by the cap, n per mean time
// to answer, rather than by -rate. The rate is judged as checkSynced
// judges it: at least low of the cap's (below which the cap wastes its
// places), and at most 25% above, which the mean of 60 draws of 20–80ms
// would reach once in thousands of runs.
func checkCapped(t *testing.T, s summary, tenants, jobs, n, rate int, low float64) {
	t.Helper()
	assert.EqualValues(t, tenants*jobs, s.OK, "items synced (errors: %q)", s.Errors)
	assert.Zero(t, s.Failed, "items failed (errors: %q)", s.Errors)
	assert.Zero(t, s.Rejected, "429s")
	assert.Zero(t, s.OverCap, "tenants over the cap")
	assert.Equal(t, n, s.Inflight, "inflight in the summary")
	assert.Equal(t, fmt.Sprintf("%d/s inflight=%d", rate, n), s.Limit, "limit")
	capRate := float64(n) / defaultLatency.mean().Seconds()
	require.Less(t, 1.25*capRate, 0.5*float64(rate), "the test's -rate must be well above the cap's rate")
	require.Len(t, s.Tenants, tenants, "tenants in the summary")
	for _, ts := range s.Tenants {
		assert.EqualValues(t, jobs, ts.OK, "%s: items synced", ts.Tenant)
		assert.Equal(t, n, ts.PeakInflight, "%s: peak in flight at the mock, want the cap reached and never passed", ts.Tenant)
		assert.LessOrEqual(t, ts.Rate, 1.25*capRate, "%s: observed rate, want the cap's %.0f/s (-inflight %d / mean %v), not -rate %d",
			ts.Tenant, capRate, n, defaultLatency.mean(), rate)
		assert.GreaterOrEqual(t, ts.Rate, low*capRate, "%s: observed rate, want near the cap's %.0f/s (-inflight %d / mean %v)",
			ts.Tenant, capRate, n, defaultLatency.mean())
	}
}

// TestInflightMemory: with -inflight 2 and the mock answering in 20–80ms,
// the cap binds: each tenant makes about 2/50ms = 40 requests/s although
// -rate allows 200, never has more than 2 in flight at the mock, and gets
// no 429.
func TestInflightMemory(t *testing.T) {
	const tenants, jobs, n, rate = 3, 60, 2, 200
	s := runJSON(t, exitOK, "-tenants", strconv.Itoa(tenants), "-jobs", strconv.Itoa(jobs),
		"-inflight", strconv.Itoa(n), "-rate", strconv.Itoa(rate))
	checkCapped(t, s, tenants, jobs, n, rate, 0.75)
}

// TestInflightProcs: the cap holds across processes sharing a backend
// that keeps leases. A backend without them refuses -inflight before
// anything runs (driver.ErrNoLeases), and the test then skips: it runs
// once the backend keeps leases. Across processes a released lease is
// seen by the others within their polling (up to 50ms), so the rate may
// fall further below the cap's than in one process.
func TestInflightProcs(t *testing.T) {
	const tenants, jobs, n, rate = 3, 60, 2, 200
	tests := []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"sqlite", func(t *testing.T) []string {
			return []string{"-backend", "sqlite", "-sqlite", filepath.Join(t.TempDir(), "b.db"), "-procs", "3"}
		}},
		{"redis", func(t *testing.T) []string {
			return []string{"-backend", "redis", "-redis", redistest.Addr(t), "-procs", "2"}
		}},
		{"postgres", func(t *testing.T) []string {
			return []string{"-backend", "postgres", "-postgres", pgtest.URL(t), "-procs", "2"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(tt.args(t), "-tenants", strconv.Itoa(tenants), "-jobs", strconv.Itoa(jobs),
				"-inflight", strconv.Itoa(n), "-rate", strconv.Itoa(rate), "-json")
			r := runDemo(t, args...)
			if r.Code == exitUsage && strings.Contains(r.Stderr, bucket.ErrNoLeases.Error()) {
				t.Skipf("-backend %s keeps no leases yet (bucket.ErrNoLeases): this test runs once it does; the demo said: %s",
					tt.name, strings.TrimSpace(r.Stderr))
			}
			checkCapped(t, jsonSummary(t, r, exitOK), tenants, jobs, n, rate, 0.5)
		})
	}
}

// TestInProcessInflight runs a capped sync in the test process, for the
// race detector over the mock's counts and the dispatcher's leases.
func TestInProcessInflight(t *testing.T) {
	cfg, err := parseFlags([]string{"-tenants", "2", "-jobs", "12", "-rate", "500", "-inflight", "3", "-latency", "1ms-5ms"}, nil)
	require.NoError(t, err)
	var stdout, stderr bytes.Buffer
	code := runParent(t.Context(), cfg, &stdout, &stderr)
	require.Equal(t, exitOK, code, "exit status\nstdout: %s\nstderr: %s", stdout.String(), stderr.String())
	for _, want := range []string{"over 500/s (x/time/rate", "or over 3 in flight; answers in 1ms-5ms", "24 of 24 items synced", "0 answered 429", "peak: the most requests"} {
		assert.Contains(t, stdout.String(), want)
	}
	assert.NotContains(t, stdout.String(), "FAILED")
}

// TestMockAPIInflight: the mock counts a tenant's requests from arrival to
// answer and refuses one more than the cap with 429 and Retry-After; its
// peak counts the refused one, so a peak above the cap shows a violation.
// Without a cap it refuses none and still reports the peak.
func TestMockAPIInflight(t *testing.T) {
	for _, tt := range []struct {
		lim      bucket.Limit
		statuses []int // of the third request of tenant a while two are held, then of the first of tenant b
	}{
		{bucket.PerSecond(1000).WithBurst(10).WithInflight(2), []int{http.StatusTooManyRequests}},
		{bucket.PerSecond(1000).WithBurst(10), []int{http.StatusOK}},
	} {
		t.Run(tt.lim.String(), func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			hold := func(ctx context.Context) {
				select {
				case <-release:
					return // answer at once once the test let go
				default:
				}
				entered <- struct{}{}
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
			api, err := startMockAPI(tt.lim, hold)
			require.NoError(t, err)
			defer api.Close()
			url := func(n int) string { return api.URL() + "/tenants/a/items/" + strconv.Itoa(n) }
			statuses := make([]int, 3)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() { statuses[i] = get(t, url(i+1), "a").StatusCode })
				<-entered
			}
			if tt.lim.Inflight == 0 {
				wg.Go(func() { statuses[2] = get(t, url(3), "a").StatusCode })
				<-entered
			} else {
				resp := get(t, url(3), "a")
				statuses[2] = resp.StatusCode
				assert.Equal(t, "1", resp.Header.Get("Retry-After"), "Retry-After of a 429 over the cap")
			}
			assert.Equal(t, 3, api.Peak("a"), "peak of tenant a with 3 requests at once")
			close(release)
			wg.Wait()
			assert.Equal(t, []int{200, 200, tt.statuses[0]}, statuses, "statuses of tenant a's 3 requests at once, under %v", tt.lim)
			assert.Equal(t, 200, get(t, url(4), "a").StatusCode, "tenant a's next request, once the others were answered")
			assert.Equal(t, 3, api.Peak("a"), "peak of tenant a afterwards")
			assert.Zero(t, api.Peak("b"), "peak of tenant b, which sent nothing")
		})
	}
}

// TestRandomLatency: the mock's times to answer are drawn from the spread,
// averaging its mean, the same sequence in every run; a context that ends
// cuts one short. Time is synctest's, so the test takes no time.
func TestRandomLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := spread{20 * time.Millisecond, 80 * time.Millisecond}
		draws := func() []time.Duration {
			hold := randomLatency(s)
			out := make([]time.Duration, 1000)
			for i := range out {
				t0 := time.Now()
				hold(context.Background())
				out[i] = time.Since(t0)
			}
			return out
		}
		first := draws()
		assert.Equal(t, first, draws(), "two runs' draws, want the same sequence")
		var sum time.Duration
		for _, d := range first {
			sum += d
		}
		assert.GreaterOrEqual(t, slices.Min(first), s.min, "shortest draw")
		assert.LessOrEqual(t, slices.Max(first), s.max, "longest draw")
		assert.InDelta(t, s.mean().Seconds(), (sum / time.Duration(len(first))).Seconds(), 0.002, "mean of 1000 draws")
		assert.Greater(t, slices.Max(first)-slices.Min(first), 50*time.Millisecond, "range of 1000 draws from %v", s.String())

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		randomLatency(s)(ctx)
		assert.Equal(t, 5*time.Millisecond, time.Since(t0), "a hold whose context ends after 5ms")
		assert.Nil(t, randomLatency(spread{}), "the hold of the zero spread")
	})
}

func TestSpreadFlag(t *testing.T) {
	tests := []struct {
		in   string
		want spread
		err  bool
	}{
		{"20ms-80ms", spread{20 * time.Millisecond, 80 * time.Millisecond}, false},
		{"1s - 2s", spread{time.Second, 2 * time.Second}, false},
		{"50ms", spread{50 * time.Millisecond, 50 * time.Millisecond}, false},
		{"0", spread{}, false},
		{"fast", spread{}, true},
		{"20-80", spread{}, true},
		{"-5ms", spread{}, true},
		{"", spread{}, true},
	}
	for _, tt := range tests {
		var s spread
		err := s.Set(tt.in)
		if tt.err {
			assert.Error(t, err, "-latency %q", tt.in)
			continue
		}
		if assert.NoError(t, err, "-latency %q", tt.in) {
			assert.Equal(t, tt.want, s, "-latency %q", tt.in)
		}
	}
	assert.Equal(t, "20ms-80ms", defaultLatency.String(), "the default spread as -latency reads it")
}

func TestParseFlagsInflight(t *testing.T) {
	tests := []struct {
		args     []string
		inflight int
		latency  spread
		limit    string
	}{
		{nil, 0, spread{}, "20/s"},
		{[]string{"-inflight", "3"}, 3, defaultLatency, "20/s inflight=3"},
		{[]string{"-inflight", "3", "-latency", "5ms-10ms"}, 3, spread{5 * time.Millisecond, 10 * time.Millisecond}, "20/s inflight=3"},
		{[]string{"-latency", "5ms"}, 0, spread{5 * time.Millisecond, 5 * time.Millisecond}, "20/s"},
		{[]string{"-inflight", "3", "-target", "http://127.0.0.1:1"}, 3, spread{}, "20/s inflight=3"}, // no mock to delay
	}
	for _, tt := range tests {
		cfg, err := parseFlags(tt.args, nil)
		require.NoError(t, err, "demo %v", tt.args)
		assert.Equal(t, tt.inflight, cfg.inflight, "demo %v: inflight", tt.args)
		assert.Equal(t, tt.latency, cfg.latency, "demo %v: latency", tt.args)
		assert.Equal(t, tt.limit, cfg.limit.String(), "demo %v: limit", tt.args)
	}
}

// TestWorkerCommandInflight: workers get the cap (it is in their limit),
// not -latency (they sync against the parent's mock as a -target).
func TestWorkerCommandInflight(t *testing.T) {
	cfg, err := parseFlags([]string{"-backend", "sqlite", "-procs", "2", "-inflight", "4"}, nil)
	require.NoError(t, err)
	cmd := workerCommand(context.Background(), "demo", cfg, "http://127.0.0.1:1", workerID{0, 2}, io.Discard)
	args := strings.Join(cmd.Args, " ")
	assert.Contains(t, args, " -inflight 4 ", "worker's command line")
	assert.NotContains(t, args, "-latency", "worker's command line")
	wcfg, err := parseFlags(cmd.Args[1:], nil)
	require.NoError(t, err, "the worker's flags: %s", args)
	assert.Equal(t, cfg.limit, wcfg.limit, "the worker's limit")
}

// TestReportOverCap: a tenant whose peak in flight at the mock passed the
// cap fails the run (exit 1), is counted in over_cap and marked in the
// table.
func TestReportOverCap(t *testing.T) {
	cfg, err := parseFlags([]string{"-tenants", "2", "-jobs", "1", "-inflight", "2"}, nil)
	require.NoError(t, err)
	tl := newTally(cfg)
	for _, name := range cfg.tenantNames() {
		tl.request(name, tl.start, http.StatusOK)
		tl.done(name, nil)
	}
	peaks := map[string]int{"tenant-1": 2, "tenant-2": 3}
	for _, tt := range []struct {
		peak     func(string) int
		overCap  int
		want     int
		contains []string
	}{
		{func(name string) int { return peaks[name] }, 1, exitFailed, []string{"peak", " 3!", "FAILED: the mock API saw 1 tenant with more than 2 requests in flight"}},
		{func(string) int { return 2 }, 0, exitOK, []string{"peak", "2 of 2 items synced"}},
	} {
		s := summarize(cfg, tl, map[string][]arrival{}, tt.peak, time.Second, false)
		assert.Equal(t, tt.overCap, s.OverCap, "over_cap")
		assert.Equal(t, 2, s.Inflight, "inflight")
		var stdout, stderr bytes.Buffer
		code := report(cfg, s, tl, nil, &stdout, &stderr)
		assert.Equal(t, tt.want, code, "exit status with over_cap %d\n%s", s.OverCap, stdout.String())
		for _, want := range tt.contains {
			assert.Contains(t, stdout.String(), want)
		}
		if tt.overCap == 0 {
			assert.NotContains(t, stdout.String(), "FAILED")
		}
	}
}

// TestProgressPeak: under -inflight the bars and the progress lines show
// the peak in flight the mock saw.
func TestProgressPeak(t *testing.T) {
	cfg, err := parseFlags([]string{"-tenants", "2", "-jobs", "1", "-inflight", "3"}, nil)
	require.NoError(t, err)
	tl := newTally(cfg)
	peak := func(name string) int { return map[string]int{"tenant-1": 2, "tenant-2": 3}[name] }
	p := startProgress(cfg, tl, peak, io.Discard, true)
	require.IsType(t, &bars{}, p, "startProgress on a terminal")
	p.stop()
	// The bars' text is read from their decorators: drawn anywhere but on
	// a terminal, mpb cuts lines at the bars' width.
	b := p.(*bars)
	for i, want := range []string{"peak 2/3 in flight", "peak 3/3 in flight"} {
		assert.Contains(t, b.rate(i)(decor.Statistics{}), want, "bar %d's text", i)
	}
	var lb syncBuffer
	l := startLines(cfg, tl, peak, &lb)
	l.print()
	l.stop()
	assert.Contains(t, lb.String(), "peak in flight 3/3", "progress line")
}
