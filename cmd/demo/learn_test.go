package main

import (
	"bytes"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/limitmock"
	"github.com/leakybucket/leakybucket/internal/pgtest"
	"github.com/leakybucket/leakybucket/internal/redistest"
)

// TestLearn runs the demo with -learn against each header family of the
// mock API: every item synced, each tenant's learned rate fell when the
// hidden limit fell, and the report's figures add up. The IETF and
// headerless runs have steps of 2 s. The GitHub family counts requests in
// fixed windows of 10 s, aligned to the clock, and its headers pace a key
// only at a window's start (a reset of at least middleware.MinPaceReset):
// its run has steps of 10 s, at 3, 1 and 2 requests/s, so that a window
// starts within the step of 1/s whatever the clock.
func TestLearn(t *testing.T) {
	tests := []struct {
		family        string
		tenants, jobs int
		rate          int
		maxShare      float64 // of requests answered 429, at most
	}{
		{"ietf", 4, 120, 40, 0.02},
		{"none", 4, 120, 40, 0.25},
		{"github", 2, 60, 4, 0.1},
	}
	for _, tt := range tests {
		t.Run(tt.family, func(t *testing.T) {
			t.Parallel()
			plot := filepath.Join(t.TempDir(), "learn.svg")
			s := runJSON(t, exitOK, "-learn", "-api-headers", tt.family, "-tenants", itoa(tt.tenants), "-jobs", itoa(tt.jobs),
				"-rate", itoa(tt.rate), "-plot", plot)
			checkLearned(t, s, tt.family, tt.tenants, tt.jobs, tt.rate, tt.maxShare)
			checkChart(t, plot, "<?xml")
		})
	}
}

// checkLearned checks a -learn run's summary against the mock API: every
// item synced, the learned rate lower in the hidden limit's slow step
// than in its first, and the figures consistent with each other.
func checkLearned(t *testing.T, s summary, family string, tenants, jobs, rate int, maxShare float64) {
	t.Helper()
	assert.EqualValues(t, tenants*jobs, s.OK, "items synced (errors: %q)", s.Errors)
	assert.Zero(t, s.Failed, "items failed (errors: %q)", s.Errors)
	require.NotNil(t, s.Learn, "the summary's learn figures")
	ls := s.Learn
	assert.Equal(t, family, ls.Headers, "learn.headers")
	assert.Equal(t, rate, ls.Ceiling, "learn.ceiling")
	assert.Equal(t, max(rate/100, 1), ls.Floor, "learn.floor, by default")
	assert.Equal(t, s.OK, ls.Goodput, "learn.goodput: answers 200, one per item synced")
	assert.InDelta(t, 100*float64(ls.Goodput)/ls.Allowed, ls.GoodputPct, 1e-9, "learn.goodput_pct")
	assert.InDelta(t, 100*float64(s.Rejected)/float64(s.Requests), ls.RejectedPct, 1e-9, "learn.rejected_pct")
	assert.LessOrEqual(t, ls.RejectedPct, 100*maxShare, "429s, %% of requests")

	var allowedSum float64
	var rejected int64
	require.Len(t, s.Tenants, tenants, "tenants")
	for _, ts := range s.Tenants {
		require.NotNil(t, ts.Learn, "%s: learn figures", ts.Tenant)
		tl := ts.Learn
		assert.EqualValues(t, jobs, ts.OK, "%s: items synced", ts.Tenant)
		assert.InDelta(t, 100*float64(ts.Rejected)/float64(ts.Requests), tl.RejectedPct, 1e-9, "%s: rejected_pct", ts.Tenant)
		assert.Positive(t, tl.Goodput, "%s: goodput", ts.Tenant)
		assert.Positive(t, tl.GoodputPct, "%s: goodput_pct", ts.Tenant)
		allowedSum += 100 * float64(ts.OK) / tl.GoodputPct
		assert.GreaterOrEqual(t, tl.Learned, float64(ls.Floor), "%s: learned rate at the end, want at least the floor", ts.Tenant)
		assert.LessOrEqual(t, tl.Learned, float64(ls.Ceiling)*1.0001, "%s: learned rate at the end, want at most the ceiling", ts.Tenant)
	}
	assert.InDelta(t, ls.Allowed, allowedSum, 1e-6*ls.Allowed, "learn.allowed, want the tenants' added up")

	require.GreaterOrEqual(t, len(ls.Steps), 2, "steps of the hidden limit the run reached: %+v", ls.Steps)
	want := hiddenSchedule(rate, jobs)
	for i, st := range ls.Steps {
		assert.Equal(t, want[i].Rate, st.Limit, "step %d: limit", i)
		assert.InDelta(t, want[i].At.Seconds(), st.AtS, 1e-9, "step %d: at_s", i)
		assert.InDelta(t, st.Goodput/float64(st.Limit)*100, st.GoodputPct, 1e-6, "step %d: goodput_pct", i)
		rejected += st.Rejected
	}
	assert.Equal(t, s.Rejected, rejected, "429s of the steps, want every 429")
	first, slow := ls.Steps[0], ls.Steps[1]
	assert.Less(t, slow.Learned, first.Learned, "mean learned rate in the step of %d/s, want below that of the step of %d/s (steps %+v)",
		slow.Limit, first.Limit, ls.Steps)
	assert.Positive(t, slow.Learned, "mean learned rate in the step of %d/s", slow.Limit)
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestLearnProcs runs -learn with 3 processes sharing each backend that
// keeps learned limits: what one process learns holds for all. A backend
// that keeps none yet is refused at the start, and its run skipped.
func TestLearnProcs(t *testing.T) {
	backends := []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"sqlite", func(t *testing.T) []string { return []string{"-sqlite", filepath.Join(t.TempDir(), "b.db")} }},
		{"redis", func(t *testing.T) []string { return []string{"-redis", redistest.Addr(t)} }},
		{"postgres", func(t *testing.T) []string { return []string{"-postgres", pgtest.URL(t)} }},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"-learn", "-backend", be.name, "-procs", "3", "-jobs", "120", "-json"}, be.args(t)...)
			r := runDemo(t, args...)
			if r.Code == exitUsage && strings.Contains(r.Stderr, bucket.ErrNoLearning.Error()) {
				t.Skipf("%s keeps no learned limits yet: %s", be.name, strings.TrimSpace(r.Stderr))
			}
			s := jsonSummary(t, r, exitOK)
			assert.Equal(t, 3, s.Procs, "procs")
			checkLearned(t, s, "ietf", 4, 120, learnRate, 0.02)
		})
	}
}

// TestLearnTarget: -learn against a -target learns from that API's
// headers; the hidden limit is not known, so the summary has no share of
// it, and the rate learned at the end is the API's last.
func TestLearnTarget(t *testing.T) {
	api, err := limitmock.Start(limitmock.Config{
		Schedule: []limitmock.Step{{At: 0, Rate: 30}, {At: time.Second, Rate: 10}},
		Headers:  limitmock.IETF,
	})
	require.NoError(t, err)
	defer api.Close()
	s := runJSON(t, exitOK, "-learn", "-target", api.URL(), "-tenants", "2", "-jobs", "40")
	assert.EqualValues(t, 80, s.OK, "items synced (errors: %q)", s.Errors)
	require.NotNil(t, s.Learn, "the summary's learn figures")
	assert.Empty(t, s.Learn.Headers, "learn.headers against a -target")
	assert.Zero(t, s.Learn.Allowed, "learn.allowed against a -target")
	assert.Empty(t, s.Learn.Steps, "learn.steps against a -target")
	assert.Equal(t, "client", s.RateSource, "rate source")
	for _, ts := range s.Tenants {
		require.NotNil(t, ts.Learn, "%s: learn figures", ts.Tenant)
		assert.InDelta(t, 10, ts.Learn.Learned, 0.01, "%s: learned rate at the end, want the API's announced 10/s", ts.Tenant)
		assert.Positive(t, ts.Learn.Goodput, "%s: goodput", ts.Tenant)
	}
}

// TestLearnInProcess runs -learn in the test process, for the race
// detector and the goroutine leak check; its timing is not judged.
func TestLearnInProcess(t *testing.T) {
	dir := t.TempDir()
	cfg, err := parseFlags([]string{"-learn", "-api-headers", "none", "-tenants", "2", "-jobs", "30", "-plot", filepath.Join(dir, "learn.png")}, nil)
	require.NoError(t, err)
	var stdout, stderr bytes.Buffer
	code := runParent(t.Context(), cfg, &stdout, &stderr)
	require.Equal(t, exitOK, code, "exit status\nstdout: %s\nstderr: %s", stdout.String(), stderr.String())
	for _, want := range []string{"hidden limit per tenant 30/s, 10/s from 500ms, 20/s from 1s", "told by nothing but 429s",
		"learned/s", "60 of 60 items synced", "of what the hidden limit allowed", "chart: "} {
		assert.Contains(t, stdout.String(), want)
	}
	checkChart(t, filepath.Join(dir, "learn.png"), "\x89PNG")
}

func TestLearnBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-learn", "-api-headers", "bogus"}, `-api-headers "bogus": want ietf, github or none`},
		{[]string{"-api-headers", "none"}, "-api-headers applies only with -learn"},
		{[]string{"-floor", "5"}, "-floor applies only with -learn"},
		{[]string{"-learn", "-floor", "41"}, "-floor 41: want a whole number from 1 to -rate 40, the ceiling"},
		{[]string{"-learn", "-rate", "10", "-floor", "0"}, "-floor 0: want a whole number from 1 to -rate 10"},
		{[]string{"-learn", "-floor", "x"}, `invalid value "x" for flag -floor: want a whole number`},
		{[]string{"-learn", "-inflight", "2"}, "-inflight 2 with -learn"},
		{[]string{"-learn", "-target", "http://127.0.0.1:1", "-api-headers", "none"}, "-api-headers applies only to the mock API"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			checkUsageError(t, runDemo(t, tt.args...), tt.want)
		})
	}
}

// TestCheckLearning: -learn needs a backend that keeps learned limits.
func TestCheckLearning(t *testing.T) {
	ms, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	defer ms.Close()
	cfg := &config{learn: true, backend: "memory"}
	assert.NoError(t, checkLearning(cfg, &store{Backend: ms}), "memstore")
	fixed := &store{Backend: struct{ driver.Backend }{ms}} // hides Learn
	assert.ErrorIs(t, checkLearning(cfg, fixed), bucket.ErrNoLearning, "a backend without Learn")
	assert.NoError(t, checkLearning(&config{backend: "memory"}, fixed), "a backend without Learn, without -learn")
}

func TestLearnDefaults(t *testing.T) {
	cfg, err := parseFlags([]string{"-learn"}, nil)
	require.NoError(t, err)
	assert.Equal(t, learnRate, cfg.rate, "-rate with -learn")
	assert.Equal(t, learnJobs, cfg.jobs, "-jobs with -learn")
	assert.Equal(t, 1, cfg.floor, "-floor with -learn")
	assert.Equal(t, limitmock.IETF, cfg.family, "-api-headers")
	assert.Equal(t, "40/s floor=1/s", cfg.limit.String(), "limit")
	assert.Equal(t, "30/s, 10/s from 10s, 20/s from 20s", scheduleString(cfg.hidden), "hidden limit")
	assert.Equal(t, 30*time.Second, estimate(cfg), "estimate")

	cfg, err = parseFlags([]string{"-learn", "-rate", "500", "-jobs", "50", "-api-headers", "github"}, nil)
	require.NoError(t, err)
	assert.Equal(t, 5, cfg.floor, "-floor with -learn -rate 500, want 1%%")
	assert.Equal(t, limitmock.GitHub, cfg.family, "-api-headers")

	cfg, err = parseFlags([]string{"-rate", "7"}, nil)
	require.NoError(t, err)
	assert.Equal(t, 100, cfg.jobs, "-jobs without -learn")
	assert.Equal(t, "7/s", cfg.limit.String(), "limit without -learn")
	assert.Nil(t, cfg.hidden, "hidden limit without -learn")
}

func TestHiddenSchedule(t *testing.T) {
	tests := []struct {
		rate, jobs int
		want       string
	}{
		{40, 600, "30/s, 10/s from 10s, 20/s from 20s"},
		{20, 300, "15/s, 5/s from 10s, 10/s from 20s"},
		{4, 60, "3/s, 1/s from 10s, 2/s from 20s"},
		{1, 30, "1/s, 1/s from 10s, 1/s from 20s"},
		{1_000_000_000, 1, "750000000/s, 250000000/s from 1ms, 500000000/s from 2ms"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, scheduleString(hiddenSchedule(tt.rate, tt.jobs)), "hiddenSchedule(%d, %d)", tt.rate, tt.jobs)
	}
}

func TestAllowed(t *testing.T) {
	schedule := hiddenSchedule(40, 600) // 30/s, 10/s from 10s, 20/s from 20s
	tests := []struct {
		a, b time.Duration
		want float64
	}{
		{0, 0, 0},
		{0, 10 * time.Second, 300},
		{5 * time.Second, 25 * time.Second, 30*5 + 10*10 + 20*5},
		{30 * time.Second, 31500 * time.Millisecond, 30},
		{12 * time.Second, 11 * time.Second, 0},
	}
	for _, tt := range tests {
		assert.InDelta(t, tt.want, limitmock.Allowed(schedule, tt.a, tt.b), 1e-9, "allowed from %v to %v", tt.a, tt.b)
	}
	assert.Equal(t, 30, limitAt(schedule, 9999*time.Millisecond))
	assert.Equal(t, 10, limitAt(schedule, 10*time.Second))
	assert.Equal(t, 20, limitAt(schedule, time.Hour))
}

// TestLearnProgress: with -learn the bars and the progress lines show
// each tenant's learned rate and the hidden limit now.
func TestLearnProgress(t *testing.T) {
	cfg, err := parseFlags([]string{"-learn", "-tenants", "2", "-jobs", "600"}, nil)
	require.NoError(t, err)
	tl := newTally(cfg)
	tl.learned("tenant-1", tl.start.Add(-time.Second), 50*time.Millisecond)    // 20/s, older
	tl.learned("tenant-1", tl.start, time.Second/30)                           // 30/s, the latest
	tl.learned("tenant-1", tl.start.Add(-2*time.Second), 100*time.Millisecond) // reported late, older still
	p := startProgress(cfg, tl, nil, io.Discard, true)
	require.IsType(t, &bars{}, p, "startProgress on a terminal")
	p.stop()
	b := p.(*bars)
	assert.Contains(t, b.rate(0)(decor.Statistics{}), "learned 30.0/s  hidden 30/s", "bar 0's text")
	assert.Contains(t, b.rate(1)(decor.Statistics{}), "learned    -/s  hidden 30/s", "bar 1's text, nothing learned yet")
	var lb syncBuffer
	l := startLines(cfg, tl, nil, &lb)
	l.print()
	l.stop()
	assert.Contains(t, lb.String(), "tenant-1 0/600 learned 30.0/s", "progress line")
	assert.Contains(t, lb.String(), "hidden limit 30/s", "progress line")
}

// TestLearnReport: the table's figures under -learn, from a tally and
// arrivals made up to be checked by hand.
func TestLearnReport(t *testing.T) {
	cfg, err := parseFlags([]string{"-learn", "-tenants", "1", "-jobs", "60"}, nil)
	require.NoError(t, err) // 30/s, 10/s from 1s, 20/s from 2s
	tl := newTally(cfg)
	var arr []arrival
	at := func(ms int, status int) {
		arr = append(arr, arrival{At: time.Duration(ms) * time.Millisecond, Status: status})
		tl.request("tenant-1", tl.start.Add(time.Duration(ms)*time.Millisecond), status)
		if status == http.StatusOK {
			tl.done("tenant-1", nil)
		}
	}
	for ms := 0; ms < 1000; ms += 50 { // 20 answers at 20/s in the step of 30/s
		at(ms, http.StatusOK)
	}
	at(1000, http.StatusTooManyRequests)
	for ms := 1100; ms <= 2000; ms += 100 { // 10 at 10/s
		at(ms, http.StatusOK)
	}
	tl.learned("tenant-1", tl.start.Add(500*time.Millisecond), time.Second/30)
	tl.learned("tenant-1", tl.start.Add(1500*time.Millisecond), 100*time.Millisecond)
	tl.finish(map[string]keyFigures{"tenant-1": {Interval: 50 * time.Millisecond}})
	s := summarize(cfg, tl, map[string][]arrival{"tenant-1": arr}, nil, 2*time.Second, false)
	require.NotNil(t, s.Learn)
	ls, tll := s.Learn, s.Tenants[0].Learn
	assert.EqualValues(t, 30, ls.Goodput, "goodput")
	// Its span: from 0 to 2s and one interval of 20/s, 2.05s.
	assert.InDelta(t, 30+10+1, ls.Allowed, 1e-9, "allowed: 30/s for 1s, 10/s for 1s, 20/s for 50ms")
	assert.InDelta(t, 100*30.0/41, ls.GoodputPct, 1e-9, "goodput_pct")
	assert.InDelta(t, 100.0/31, ls.RejectedPct, 1e-9, "rejected_pct")
	assert.InDelta(t, 30/2.05, tll.Goodput, 1e-9, "tenant's goodput: 30 answers 200 in 2.05s")
	assert.InDelta(t, 20, tll.Learned, 1e-9, "tenant's learned rate at the end")
	want := []stepSummary{
		{AtS: 0, Limit: 30, Goodput: 20, GoodputPct: 100 * 20.0 / 30, Learned: 30},
		{AtS: 1, Limit: 10, Goodput: 9, GoodputPct: 90, Learned: 10, Rejected: 1},
		{AtS: 2, Limit: 20, Goodput: 20, GoodputPct: 100},
	}
	require.Len(t, ls.Steps, len(want), "steps reached: %+v", ls.Steps)
	for i, w := range want {
		got := ls.Steps[i]
		assert.Equal(t, []any{w.AtS, w.Limit, w.Rejected}, []any{got.AtS, got.Limit, got.Rejected}, "step %d: at_s, limit, rejected", i)
		assert.InDeltaSlice(t, []float64{w.Goodput, w.GoodputPct, w.Learned}, []float64{got.Goodput, got.GoodputPct, got.Learned}, 1e-6,
			"step %d: goodput, goodput_pct, learned", i)
	}

	var b strings.Builder
	writeTable(&b, s)
	for _, want := range []string{"goodput/s", "429 %", "learned/s", "3.23%", "14.63", "73.2%", "20.0",
		"30/s            0.0s", "1 answered 429 (3.23% of requests); goodput 73.2% of what the hidden limit allowed"} {
		assert.Contains(t, b.String(), want, "table")
	}
}

// TestLearnWorkerCommand: a worker runs -learn with the parent's floor,
// against the parent's API.
func TestLearnWorkerCommand(t *testing.T) {
	cfg, err := parseFlags([]string{"-learn", "-backend", "sqlite", "-procs", "2", "-floor", "3", "-api-headers", "none"}, nil)
	require.NoError(t, err)
	cmd := workerCommand(t.Context(), "demo", cfg, "http://127.0.0.1:1", workerID{0, 2}, io.Discard)
	args := strings.Join(cmd.Args, " ")
	assert.Contains(t, args, "-rate 40 ", "worker's command line")
	assert.Contains(t, args, "-jobs 600 ", "worker's command line")
	assert.Contains(t, args, "-target http://127.0.0.1:1", "worker's command line")
	assert.Contains(t, args, "-learn -floor 3", "worker's command line")
	assert.NotContains(t, args, "-api-headers", "worker's command line: the parent runs the API")
	wcfg, err := parseFlags(cmd.Args[1:], nil)
	require.NoError(t, err, "the worker's flags")
	assert.Equal(t, cfg.limit, wcfg.limit, "the worker's limit")
}
