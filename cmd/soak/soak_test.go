package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/cmdtest"
	"github.com/leakybucket/leakybucket/internal/pgtest"
	"github.com/leakybucket/leakybucket/internal/redistest"
)

// soakBin is the program, built once by TestMain; the short runs run it as
// a user would, without the race detector (its shadow memory grows with
// the heap, which is what they judge). TestRunResolvesEveryJob runs the
// same code in the test process, under -race.
var soakBin string

func TestMain(m *testing.M) { cmdtest.Main(m, "soak", &soakBin, redistest.Exit) }

// shortRun are the flags of a run of a few seconds that reaches its steady
// state well within its warm-up: keys live half a second, quotas span as
// much, and the stores sweep four times a second.
var shortRun = []string{"-duration", "6s", "-warmup", "2s", "-sample", "250ms",
	"-keys-per-minute", "60000", "-key-life", "500ms", "-sweep", "250ms"}

func runSoakBin(t *testing.T, args ...string) cmdtest.Run {
	t.Helper()
	return cmdtest.Exec(t, 2*time.Minute, soakBin, args...)
}

// TestShortRun: a run of a few seconds on each backend exits 0, judges
// every resource flat, resolves every job, and writes its samples and its
// chart.
func TestShortRun(t *testing.T) {
	tests := []struct {
		backend string
		args    func(t *testing.T) []string
		judged  []string // the backend's own resources
	}{
		{"memory", func(*testing.T) []string { return nil }, nil},
		{"sqlite", func(t *testing.T) []string { return []string{"-sqlite", filepath.Join(t.TempDir(), "b.db")} },
			[]string{"sqlite_file_bytes", "sqlite_wal_bytes", "sqlite_rows", "sqlite_leases"}},
		{"redis", func(t *testing.T) []string { return []string{"-redis", redistest.Addr(t)} },
			[]string{"redis_used_memory_bytes", "redis_keys"}},
		{"postgres", func(t *testing.T) []string { return []string{"-postgres", pgtest.URL(t)} },
			[]string{"pg_rows", "pg_leases"}},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			dir := t.TempDir()
			out, chart := filepath.Join(dir, "samples.jsonl"), filepath.Join(dir, "soak.svg")
			args := append([]string{"-backend", tt.backend, "-out", out, "-plot", chart}, tt.args(t)...)
			r := runSoakBin(t, append(args, shortRun...)...)
			require.Equal(t, exitOK, r.Code, "%s: exit status\nstdout:\n%s\nstderr:\n%s", r, r.Stdout, r.Stderr)
			assert.Empty(t, r.Stderr, "stderr")
			assert.Contains(t, r.Stdout, "\nPASS\n")
			for _, name := range append([]string{"heap_live_bytes", "goroutines", "open_fds"}, tt.judged...) {
				assert.Regexp(t, `(?m)^\s*`+name+`\s.*\sflat$`, r.Stdout, "%s judged flat", name)
			}

			samples := readSamples(t, out)
			require.Len(t, samples, 25, "samples: one before the load, then one every 250ms for 6s")
			last := samples[len(samples)-1]
			assert.Positive(t, last.Jobs.Accepted, "jobs accepted by the last sample")
			assert.Positive(t, last.Stats.Throttled, "admissions throttled: the limits bind")
			assert.Positive(t, last.Stats.Retried, "jobs put back after a retry-after")
			assert.Greater(t, last.Jobs.Keys, int64(6000), "keys given jobs: 1000 a second for 6s")
			assert.Zero(t, last.Stats.BackendErrors, "backend errors")
			for _, name := range tt.judged {
				assert.Contains(t, last.Resources, name)
			}
			b, err := os.ReadFile(chart)
			require.NoError(t, err, "-plot wrote no chart")
			assert.True(t, bytes.HasPrefix(b, []byte("<?xml")), "-plot %s is not SVG", chart)
		})
	}
}

func readSamples(t *testing.T, path string) []sample {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err, "-out wrote no file")
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s sample
		require.NoError(t, json.Unmarshal(sc.Bytes(), &s), "-out line %d: %s", len(out)+1, sc.Text())
		out = append(out, s)
	}
	require.NoError(t, sc.Err())
	return out
}

// TestInterrupt: Ctrl-C ends the run at once with the report so far, and
// exit status 130.
func TestInterrupt(t *testing.T) {
	cmd := exec.Command(soakBin, "-duration", "1m", "-sample", "100ms", "-warmup", "1s")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for lines := 0; lines < 3 && sc.Scan(); { // three samples: the load runs
		out.WriteString(sc.Text() + "\n")
		if strings.HasSuffix(strings.Fields(sc.Text() + " x")[0], "s") {
			lines++
		}
	}
	start := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	rest, _ := io.ReadAll(stdout)
	out.Write(rest)
	err = cmd.Wait()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "after SIGINT\nstdout:\n%s\nstderr:\n%s", out.String(), stderr.String())
	assert.Equal(t, exitInterrupted, exit.ExitCode(), "exit status after SIGINT\nstdout:\n%s\nstderr:\n%s", out.String(), stderr.String())
	assert.Less(t, time.Since(start), 30*time.Second, "the run ended at once, not after -duration")
	assert.Contains(t, out.String(), "interrupted after")
	assert.Regexp(t, `jobs: (\d+) accepted, (\d+) resolved`, out.String())
	assert.Contains(t, out.String(), "heap_live_bytes", "the report so far")
	assert.Empty(t, stderr.String(), "stderr")
}

func TestBadFlags(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "a.svg"), 0o755))
	tests := []struct {
		args []string
		want string // in the one line on stderr
	}{
		{[]string{"-backend", "mysql"}, `-backend "mysql": want memory, sqlite, redis or postgres`},
		{[]string{"-duration", "10"}, `invalid value "10" for flag -duration`},
		{[]string{"-duration", "500ms"}, "-duration 500ms: want 1s or more"},
		{[]string{"-duration", "10s", "-warmup", "10s"}, "-warmup 10s: want at least 0 and less than -duration 10s"},
		{[]string{"-duration", "10s", "-warmup", "-1s"}, "-warmup -1s"},
		{[]string{"-duration", "60s", "-sample", "10s"}, "leave 5 samples after the warm-up: want at least 6"},
		{[]string{"-sample", "1ms"}, "-sample 1ms: want 10ms or more"},
		{[]string{"-keys-per-minute", "0"}, "-keys-per-minute 0: want a whole number from 1"},
		{[]string{"-keys-per-minute", "many"}, `invalid value "many" for flag -keys-per-minute: want a whole number`},
		{[]string{"-workers", "0"}, "-workers 0"},
		{[]string{"-queue", "-1"}, "-queue -1"},
		{[]string{"-retry-after", "0.9"}, "-retry-after 0.9: want a fraction from 0 to 0.5"},
		{[]string{"-retry-after", "NaN"}, "-retry-after NaN"},
		{[]string{"-key-life", "0s"}, "-key-life 0s: want 1ms or more"},
		{[]string{"-sweep", "1ms"}, "-sweep 1ms: want 100ms or more"},
		{[]string{"-plot", "soak.gif"}, `-plot "soak.gif": want a file name ending in .svg or .png`},
		{[]string{"-plot", filepath.Join(dir, "a.svg")}, "is a directory"},
		{[]string{"-plot", "/no/such/dir/soak.svg"}, `-plot "/no/such/dir/soak.svg"`},
		{[]string{"-out", "/no/such/dir/soak.jsonl"}, `-out "/no/such/dir/soak.jsonl"`},
		{[]string{"-redis", "127.0.0.1:6379"}, "-redis applies only with -backend redis"},
		{[]string{"-backend", "redis", "-sqlite", "b.db"}, "-sqlite applies only with -backend sqlite"},
		{[]string{"-postgres", "postgres://localhost/x"}, "-postgres applies only with -backend postgres"},
		{[]string{"-backend", "redis", "-redis", "redis://[::1"}, `-redis "redis://[::1"`},
		{[]string{"-backend", "postgres", "-postgres", "postgres://[::1"}, "-postgres"},
		{[]string{"-nosuchflag"}, "-nosuchflag"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			r := cmdtest.Run{Name: "soak", Args: tt.args, Stdout: stdout.String(), Stderr: stderr.String(), Code: code}
			cmdtest.CheckUsageError(t, r, exitUsage, tt.want)
		})
	}
}

func TestUnreachableBackends(t *testing.T) {
	addr := unusedAddr(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-backend", "redis", "-redis", addr}, "no Redis answers at " + addr},
		{[]string{"-backend", "postgres", "-postgres", "postgres://postgres@" + addr + "/postgres"}, "no PostgreSQL answers at " + addr},
		{[]string{"-backend", "sqlite", "-sqlite", filepath.Join(t.TempDir(), "no", "such", "dir", "b.db")}, "-backend sqlite"},
	} {
		t.Run(tt.args[1], func(t *testing.T) {
			cmdtest.CheckUsageError(t, runSoakBin(t, tt.args...), exitUsage, tt.want)
		})
	}
}

// unusedAddr returns a loopback address where nothing listens.
func unusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, exitOK, run([]string{"-help"}, &stdout, &stderr))
	assert.Empty(t, stderr.String())
	for _, f := range []string{"-backend", "-sqlite", "-redis", "-postgres", "-duration", "-warmup", "-sample",
		"-keys-per-minute", "-key-life", "-workers", "-queue", "-retry-after", "-sweep", "-seed", "-out", "-plot"} {
		assert.Regexp(t, `(?m)^\s+`+f+`\b`, stdout.String(), "soak -help does not document %s", f)
	}
}

// inProcess returns a short run's config on backend (memory or sqlite),
// with -duration d.
func inProcess(t *testing.T, backend string, d time.Duration) *config {
	t.Helper()
	args := []string{"-backend", backend, "-duration", d.String(), "-warmup", "1s", "-sample", "100ms",
		"-keys-per-minute", "60000", "-key-life", "500ms", "-sweep", "250ms", "-workers", "16"}
	if backend == "sqlite" {
		args = append(args, "-sqlite", filepath.Join(t.TempDir(), "b.db"))
	}
	cfg, err := parseFlags(args, io.Discard)
	require.NoError(t, err)
	return cfg
}

// TestRunResolvesEveryJob runs the soak in the test process, under -race
// when the tests are: every accepted job resolved, counted alike by the
// futures and the dispatcher, nothing failed, the shutdown clean, and
// every goroutine gone after Close (goleak, in TestMain).
func TestRunResolvesEveryJob(t *testing.T) {
	for _, backend := range []string{"memory", "sqlite"} {
		t.Run(backend, func(t *testing.T) {
			s, err := newSoak(t.Context(), inProcess(t, backend, 3*time.Second), handle, io.Discard)
			require.NoError(t, err)
			interrupted, shutdownErr := s.run(t.Context(), io.Discard)
			s.futures.collect()
			s.b.close()
			assert.False(t, interrupted)
			require.NoError(t, shutdownErr)
			assert.Empty(t, s.check(shutdownErr, interrupted))
			assert.Empty(t, s.futures.pending, "futures unresolved")
			assert.Positive(t, s.futures.succeeded.Load(), "jobs succeeded")
			assert.Equal(t, s.futures.accepted.Load(), s.futures.succeeded.Load(), "jobs accepted and succeeded")
		})
	}
}

// TestRunFindsLeaks: a handler that keeps what every job allocates, or
// leaves a goroutine behind every hundred jobs, makes the judgement fail
// on the heap, or on the goroutines; the same run with the soak's own
// handler does not.
func TestRunFindsLeaks(t *testing.T) {
	var mu sync.Mutex
	var kept [][]byte
	release := make(chan struct{})
	var stuck sync.WaitGroup
	defer func() { close(release); stuck.Wait() }()
	var n int
	tests := []struct {
		name string
		h    func(context.Context, job) (uint64, error)
		grew map[string]bool
	}{
		{"none", handle, map[string]bool{"heap_live_bytes": false, "goroutines": false}},
		{"heap", func(ctx context.Context, j job) (uint64, error) {
			mu.Lock()
			kept = append(kept, make([]byte, 256))
			mu.Unlock()
			return handle(ctx, j)
		}, map[string]bool{"heap_live_bytes": true, "goroutines": false}},
		{"goroutines", func(ctx context.Context, j job) (uint64, error) {
			mu.Lock()
			if n++; n%100 == 0 {
				stuck.Go(func() { <-release })
			}
			mu.Unlock()
			return handle(ctx, j)
		}, map[string]bool{"goroutines": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := newSoak(t.Context(), inProcess(t, "memory", 4*time.Second), tt.h, io.Discard)
			require.NoError(t, err)
			_, shutdownErr := s.run(t.Context(), io.Discard)
			s.b.close()
			require.NoError(t, shutdownErr)
			found := map[string]judgement{}
			for _, j := range s.judge() {
				found[j.r.name] = j
			}
			for name, grew := range tt.grew {
				j := found[name]
				require.True(t, j.ok, "%s judged", name)
				assert.Equal(t, grew, j.grew, "%s grew: %s → %s, slope %s a minute", name, j.r.format(j.first), j.r.format(j.last), j.r.formatSigned(60*j.slope))
			}
			mu.Lock()
			kept = nil
			mu.Unlock()
		})
	}
}

// TestCheckFindsLostJobs: check reports a job never resolved, a job that
// failed and a Shutdown that timed out, a line each.
func TestCheckFindsLostJobs(t *testing.T) {
	release := make(chan struct{})
	h := func(ctx context.Context, j job) (uint64, error) {
		switch j.key {
		case "blocked":
			<-release
		case "failing":
			return 0, errors.New("soak: boom")
		}
		return 0, nil
	}
	d, err := dispatcher.New(h, func(j job) string { return j.key }, dispatcher.WithWorkers(2))
	require.NoError(t, err)
	s := &soak{d: d}
	for _, key := range []string{"blocked", "failing", "fine"} {
		f, err := d.Submit(t.Context(), job{key: key})
		require.NoError(t, err)
		s.futures.add(f)
	}
	for s.futures.resolved() < 2 {
		s.futures.collect()
		time.Sleep(time.Millisecond)
	}

	failures := s.check(nil, false)
	close(release)
	require.NoError(t, d.Shutdown(t.Context()))
	require.Len(t, failures, 2, "%q", failures)
	assert.Equal(t, "jobs: 1 of 3 accepted jobs were never resolved", failures[0])
	assert.Equal(t, "jobs: 1 failed, the first with: soak: boom", failures[1])

	s.futures.collect()
	boom := "jobs: 1 failed, the first with: soak: boom"
	assert.Equal(t, []string{boom}, s.check(nil, false), "after the blocked job ended")
	assert.Equal(t, []string{"shutdown: the dispatcher did not drain in 2m0s (context deadline exceeded): its queued jobs were resolved with ErrClosed", boom},
		s.check(context.DeadlineExceeded, false), "after a Shutdown that timed out")
	assert.Equal(t, []string{boom}, s.check(context.DeadlineExceeded, true), "after a Shutdown cut short by Ctrl-C")
}
