package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/internal/redistest"
)

// demoBin is the demo, built once by TestMain; the end-to-end tests run it
// as a user would. It is built without the race detector even under
// go test -race: they time what users run, and an instrumented binary runs
// several times slower. TestInProcess covers the same code under -race.
var demoBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "leakybucket-demo-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	demoBin = filepath.Join(dir, "demo")
	if out, err := exec.Command("go", "build", "-o", demoBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the demo: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		redistest.Exit(code)
	}))
}

// A demoRun is what one run of the demo printed and how it exited.
type demoRun struct {
	args           []string
	stdout, stderr string
	code           int
}

func runDemo(t *testing.T, args ...string) demoRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, demoBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := demoRun{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("demo %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// runJSON runs the demo with -json and returns its summary, failing the
// test unless it exited with want.
func runJSON(t *testing.T, want int, args ...string) summary {
	t.Helper()
	r := runDemo(t, append(args, "-json")...)
	if r.code != want {
		t.Fatalf("demo %s: exit %d, want %d\nstderr: %s\nstdout: %s", strings.Join(r.args, " "), r.code, want, r.stderr, r.stdout)
	}
	var s summary
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("demo %s: stdout is not one JSON summary: %v\n%s", strings.Join(r.args, " "), err, r.stdout)
	}
	if dec.More() {
		t.Fatalf("demo %s: more than one JSON value on stdout:\n%s", strings.Join(r.args, " "), r.stdout)
	}
	checkSpecFields(t, r.stdout)
	return s
}

// checkSpecFields checks the JSON summary's names and types that SPEC §7
// promises scripts, independently of the demo's own summary type.
func checkSpecFields(t *testing.T, out string) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("JSON summary: %v", err)
	}
	for _, k := range []string{"requests", "ok", "rejected", "retries", "failed", "elapsed_s"} {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("JSON summary field %q = %v, want a number", k, m[k])
		}
	}
	tenants, ok := m["tenants"].([]any)
	if !ok {
		t.Fatalf("JSON summary field \"tenants\" = %v, want a list", m["tenants"])
	}
	for _, x := range tenants {
		tm, _ := x.(map[string]any)
		if _, ok := tm["tenant"].(string); !ok {
			t.Errorf("JSON tenant %v: no string \"tenant\"", x)
		}
		for _, k := range []string{"ok", "rejected", "rate"} {
			if _, ok := tm[k].(float64); !ok {
				t.Errorf("JSON tenant %v: field %q is not a number", x, k)
			}
		}
	}
}

// checkSynced checks the demo's promise: every item synced, no 429 from the
// mock, and each tenant served at its limit, within 5%.
func checkSynced(t *testing.T, s summary, tenants, jobs, rate int) {
	t.Helper()
	if s.Rejected != 0 || s.Failed != 0 || s.OK != int64(tenants*jobs) || s.Interrupted {
		t.Errorf("summary: ok %d, failed %d, 429s %d, interrupted %v; want ok %d, failed 0, 429s 0, not interrupted (errors: %q)",
			s.OK, s.Failed, s.Rejected, s.Interrupted, tenants*jobs, s.Errors)
	}
	if len(s.Tenants) != tenants {
		t.Fatalf("summary has %d tenants, want %d", len(s.Tenants), tenants)
	}
	for _, ts := range s.Tenants {
		if ts.OK != int64(jobs) || ts.Rejected != 0 {
			t.Errorf("%s: ok %d, 429s %d; want ok %d, 429s 0", ts.Tenant, ts.OK, ts.Rejected, jobs)
		}
		if dev := math.Abs(ts.Rate-float64(rate)) / float64(rate); dev > 0.05 {
			t.Errorf("%s: observed rate %.2f/s is %.1f%% off the limit %d/s, want within 5%% (dispatcher: %d admissions refused, %d late)",
				ts.Tenant, ts.Rate, 100*dev, rate, ts.Throttled, ts.Late)
		}
	}
}

func TestMemoryBackend(t *testing.T) {
	plot := filepath.Join(t.TempDir(), "rate.svg")
	s := runJSON(t, exitOK, "-jobs", "60", "-rate", "30", "-plot", plot)
	checkSynced(t, s, 4, 60, 30)
	if s.Backend != "memory" || s.Procs != 1 || s.RateSource != "api" || s.Limit != "30/s" {
		t.Errorf("summary: backend %q, procs %d, rate source %q, limit %q; want memory, 1, api, 30/s", s.Backend, s.Procs, s.RateSource, s.Limit)
	}
	checkChart(t, plot, "<?xml")
}

// TestInProcess runs the demo in the test process, for the race detector
// and the goroutine leak check; its timing is not judged.
func TestInProcess(t *testing.T) {
	dir := t.TempDir()
	cfg, err := parseFlags([]string{"-tenants", "3", "-jobs", "15", "-rate", "50", "-burst", "2", "-plot", filepath.Join(dir, "rate.svg")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := runParent(t.Context(), cfg, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"tenant-3", "45 of 45 items synced", "0 answered 429", "chart: "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestSQLiteProcs(t *testing.T) {
	dir := t.TempDir()
	plot := filepath.Join(dir, "rate.png")
	s := runJSON(t, exitOK, "-backend", "sqlite", "-sqlite", filepath.Join(dir, "buckets.db"), "-procs", "3",
		"-jobs", "60", "-rate", "30", "-plot", plot)
	checkSynced(t, s, 4, 60, 30)
	if s.Procs != 3 {
		t.Errorf("summary: procs %d, want 3", s.Procs)
	}
	checkChart(t, plot, "\x89PNG")
}

// TestSQLiteDefaultFile: without -sqlite, each run has a database file of
// its own in the temp dir, removed after it: a quota one run used up does
// not hold up the next.
func TestSQLiteDefaultFile(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	for run := range 2 {
		s := runJSON(t, exitOK, "-backend", "sqlite", "-tenants", "1", "-jobs", "20", "-quota", "30/1h")
		if s.OK != 20 || s.Failed != 0 {
			t.Errorf("run %d: ok %d, failed %d; want 20 ok", run+1, s.OK, s.Failed)
		}
	}
	if left, err := os.ReadDir(tmp); err != nil || len(left) != 0 {
		t.Errorf("the temp dir holds %d entries after the runs (%v), want none", len(left), err)
	}
}

func TestRedisProcs(t *testing.T) {
	addr := redistest.Addr(t)
	s := runJSON(t, exitOK, "-backend", "redis", "-redis", addr, "-procs", "2", "-jobs", "60", "-rate", "30")
	checkSynced(t, s, 4, 60, 30)
}

func checkChart(t *testing.T, path, magic string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("-plot wrote no chart: %v", err)
	}
	if !bytes.HasPrefix(b, []byte(magic)) || len(b) < 1000 {
		t.Errorf("-plot %s: %d bytes starting %q, want a chart starting %q", path, len(b), b[:min(len(b), 8)], magic)
	}
}

func TestBadFlags(t *testing.T) {
	plotDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(plotDir, "a.svg"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string // in the one line on stderr
	}{
		{[]string{"-tenants", "0"}, "-tenants 0"},
		{[]string{"-jobs", "-5"}, "-jobs -5"},
		{[]string{"-rate", "fast"}, `invalid value "fast" for flag -rate: want a whole number`},
		{[]string{"-rate", "0"}, "-rate 0"},
		{[]string{"-burst", "0"}, "-burst 0"},
		{[]string{"-workers", "0"}, "-workers 0"},
		{[]string{"-procs", "0"}, "-procs 0"},
		{[]string{"-backend", "postgres"}, `-backend "postgres"`},
		{[]string{"-quota", "500"}, `-quota: "500" is not of the form N/P`},
		{[]string{"-quota", "500/fortnight"}, `-quota: "500/fortnight": period "fortnight"`},
		{[]string{"-quota", "500/1h,500/1h"}, `-quota`},
		{[]string{"-quota", "0/1h"}, `-quota "0/1h"`},
		{[]string{"-target", "ftp://example.com"}, `-target "ftp://example.com"`},
		{[]string{"-target", "localhost:8080"}, `-target "localhost:8080"`},
		{[]string{"-backend", "redis", "-redis", "redis://[::1"}, `-redis "redis://[::1"`},
		{[]string{"-plot", "rate.gif"}, `-plot "rate.gif"`},
		{[]string{"-plot", "/no/such/dir/rate.svg"}, `-plot "/no/such/dir/rate.svg"`},
		{[]string{"-plot", plotDir + "/a.svg"}, "is a directory"},
		{[]string{"-procs", "2"}, "memory backend"},
		{[]string{"-redis", "127.0.0.1:6379"}, "-redis applies only with -backend redis"},
		{[]string{"-backend", "redis", "-sqlite", "b.db"}, "-sqlite applies only with -backend sqlite"},
		{[]string{"-plot", "/proc/rate.svg"}, `-plot "/proc/rate.svg"`},
		{[]string{"-nosuchflag"}, "-nosuchflag"},
		{[]string{"extra"}, `"extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			checkUsageError(t, runDemo(t, tt.args...), tt.want)
		})
	}
}

// checkUsageError checks that r exited 2 with nothing on stdout and one
// line on stderr that names the problem.
func checkUsageError(t *testing.T, r demoRun, want string) {
	t.Helper()
	line := strings.TrimSuffix(r.stderr, "\n")
	if r.code != exitUsage || r.stdout != "" || strings.Contains(line, "\n") || !strings.Contains(line, want) {
		t.Errorf("demo %s: exit %d, stdout %q, stderr %q; want exit 2, no stdout, one line containing %q",
			strings.Join(r.args, " "), r.code, r.stdout, r.stderr, want)
	}
}

func TestUnreachableBackends(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		addr := unusedAddr(t)
		r := runDemo(t, "-backend", "redis", "-redis", addr)
		checkUsageError(t, r, "no Redis answers at "+addr)
	})
	t.Run("sqlite", func(t *testing.T) {
		r := runDemo(t, "-backend", "sqlite", "-sqlite", filepath.Join(t.TempDir(), "no", "such", "dir", "b.db"))
		checkUsageError(t, r, "-backend sqlite")
	})
	t.Run("sqlite not a database", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "notes.txt")
		if err := os.WriteFile(path, bytes.Repeat([]byte("not a database\n"), 100), 0o644); err != nil {
			t.Fatal(err)
		}
		checkUsageError(t, runDemo(t, "-backend", "sqlite", "-sqlite", path, "-procs", "2"), "-backend sqlite")
	})
}

func TestHelp(t *testing.T) {
	r := runDemo(t, "-help")
	if r.code != exitOK || r.stderr != "" {
		t.Fatalf("demo -help: exit %d, stderr %q; want 0 and nothing", r.code, r.stderr)
	}
	for _, f := range []string{"-backend", "-sqlite", "-redis", "-tenants", "-jobs", "-rate", "-burst", "-quota", "-workers", "-procs", "-target", "-json", "-plot"} {
		if !strings.Contains(r.stdout, "  "+f+" ") && !strings.Contains(r.stdout, "  "+f+"\n") {
			t.Errorf("demo -help does not document %s:\n%s", f, r.stdout)
		}
	}
}

// TestInterrupt: Ctrl-C stops the run at once, summarises what was done and
// exits 130, in one process and with workers.
func TestInterrupt(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"one process", nil},
		{"workers", []string{"-backend", "sqlite", "-sqlite", filepath.Join(t.TempDir(), "b.db"), "-procs", "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(demoBin, append(tt.args, "-jobs", "1000", "-tenants", "2")...)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			out := readUntil(t, stdout) // jobs are running
			cmd.Process.Signal(syscall.SIGINT)
			rest := new(bytes.Buffer)
			rest.ReadFrom(stdout)
			err = cmd.Wait()
			out += rest.String()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != exitInterrupted {
				t.Fatalf("after SIGINT: %v, want exit %d\nstdout: %s\nstderr: %s", err, exitInterrupted, out, stderr.String())
			}
			if !strings.Contains(out, "not synced (interrupted)") || !strings.Contains(out, "tenant-2 ") {
				t.Errorf("after SIGINT, no summary of what was done:\n%s", out)
			}
			if stderr.Len() > 0 {
				t.Errorf("after SIGINT, stderr: %s", stderr.String())
			}
		})
	}
}

// readUntil reads lines from r until a progress line, and returns them.
func readUntil(t *testing.T, r io.Reader) string {
	t.Helper()
	var b strings.Builder
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
		if f := strings.Fields(sc.Text()); len(f) > 1 && strings.HasSuffix(f[0], "s") && f[1] == "tenant-1" {
			return b.String()
		}
	}
	t.Fatalf("the demo ended before printing progress:\n%s", b.String())
	return ""
}

// unusedAddr returns a loopback address where nothing listens.
func unusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestWorkerKilled: a -procs worker killed mid-run fails the jobs it had
// not reported, and only those: the summary still adds up to the items,
// and the exit status says a job failed.
func TestWorkerKilled(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("finds the workers in /proc")
	}
	const tenants, jobs = 4, 100 // 5 s at 20/s
	cmd := exec.Command(demoBin, "-backend", "sqlite", "-sqlite", filepath.Join(t.TempDir(), "b.db"),
		"-procs", "2", "-jobs", strconv.Itoa(jobs), "-json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var worker int
	for deadline := time.Now().Add(30 * time.Second); worker == 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		worker = childOf(cmd.Process.Pid)
	}
	if worker == 0 {
		cmd.Process.Kill()
		t.Fatal("no worker process found")
	}
	time.Sleep(time.Second) // a fifth of the run
	if err := syscall.Kill(worker, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("demo with a killed worker: %v, want exit status 1\nstderr: %s", err, stderr.String())
	}
	var s summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("stdout is not a JSON summary: %v\n%s", err, stdout.String())
	}
	if s.Failed == 0 || s.OK+s.Failed+s.Cancelled != tenants*jobs {
		t.Errorf("summary: ok %d, failed %d, cancelled %d; want some failed and %d in all", s.OK, s.Failed, s.Cancelled, tenants*jobs)
	}
	for _, ts := range s.Tenants {
		if ts.OK+ts.Failed+ts.Cancelled != jobs {
			t.Errorf("%s: ok %d, failed %d, cancelled %d; want %d in all", ts.Tenant, ts.OK, ts.Failed, ts.Cancelled, jobs)
		}
	}
}

// childOf returns the pid of a child process of pid, or 0.
func childOf(pid int) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after ")".
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return child
		}
	}
	return 0
}
