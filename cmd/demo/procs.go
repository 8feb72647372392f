package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// With -procs P the demo runs P copies of itself as worker processes. A
// worker learns its role from the environment, syncs its share of the
// items against the parent's API through the shared backend, and reports
// to the parent in JSON lines on its stdout.
const (
	envWorker = "LEAKYBUCKET_DEMO_WORKER" // "i/P": worker i of P, from 0
	envPrefix = "LEAKYBUCKET_DEMO_PREFIX" // the run's Redis key prefix
	// envServer is the Redis address or PostgreSQL URL: in the
	// environment, not on the command line, where ps would show a
	// password in it to every user of the host.
	envServer = "LEAKYBUCKET_DEMO_SERVER"
	// envMetrics is the worker's own -metrics address: the parent's
	// port + i.
	envMetrics = "LEAKYBUCKET_DEMO_METRICS"
)

type workerID struct{ index, count int }

// workerRole reports whether this process is a worker, and which.
func workerRole() (workerID, bool, error) {
	v, ok := os.LookupEnv(envWorker)
	if !ok {
		return workerID{}, false, nil
	}
	var w workerID
	if _, err := fmt.Sscanf(v, "%d/%d", &w.index, &w.count); err != nil || w.index < 0 || w.index >= w.count {
		return workerID{}, true, fmt.Errorf("%s=%q: want i/P with 0 ≤ i < P", envWorker, v)
	}
	return w, true, nil
}

// An event is one line from a worker to its parent.
type event struct {
	Kind   string                `json:"kind"` // request, done, learned, finish or error
	Tenant string                `json:"tenant,omitempty"`
	At     int64                 `json:"at,omitempty"`     // request: when sent, learned: when sampled; Unix ns
	Status int                   `json:"status,omitempty"` // request: the answer's HTTP status, 0 for none
	Result string                `json:"result,omitempty"` // done: ok, failed or cancelled
	Err    string                `json:"err,omitempty"`    // done: the job's error; error: why the worker stopped
	Keys   map[string]keyFigures `json:"keys,omitempty"`   // finish
	// Interval is the emission interval a tenant's bucket applied, in
	// ns (learned).
	Interval time.Duration `json:"interval,omitempty"`
}

// runWorker is the body of a worker process.
func runWorker(ctx context.Context, cfg *config, w workerID, stdout io.Writer) int {
	ev := &eventWriter{enc: json.NewEncoder(stdout)}
	cfg.prefix = os.Getenv(envPrefix)
	if server, ok := os.LookupEnv(envServer); ok {
		switch cfg.backend {
		case "redis":
			cfg.redisAddr = server
		case "postgres":
			cfg.postgresURL = server
		}
	}
	st, err := openBackend(ctx, cfg)
	if err != nil {
		ev.write(event{Kind: "error", Err: err.Error()})
		return exitUsage
	}
	defer st.close()
	cfg.metrics = os.Getenv(envMetrics) // this worker's own port, if any
	metrics, err := listenMetrics(cfg)
	if err != nil {
		ev.write(event{Kind: "error", Err: err.Error()})
		return exitUsage
	}
	if err := syncItems(ctx, cfg, st.Backend, cfg.target, share(cfg, w.index, w.count), ev, metrics); err != nil {
		ev.write(event{Kind: "error", Err: err.Error()})
		return exitUsage
	}
	if ctx.Err() != nil {
		return exitInterrupted
	}
	return exitOK
}

// An eventWriter is a worker's recorder: it writes events as JSON lines.
type eventWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (e *eventWriter) write(ev event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.enc.Encode(ev) // if the parent has gone, there is no one to tell
}

func (e *eventWriter) request(tenant string, sent time.Time, status int) {
	e.write(event{Kind: "request", Tenant: tenant, At: sent.UnixNano(), Status: status})
}

func (e *eventWriter) done(tenant string, err error) {
	ev := event{Kind: "done", Tenant: tenant, Result: classify(err)}
	if err != nil {
		ev.Err = err.Error()
	}
	e.write(ev)
}

func (e *eventWriter) learned(tenant string, at time.Time, interval time.Duration) {
	e.write(event{Kind: "learned", Tenant: tenant, At: at.UnixNano(), Interval: interval})
}

func (e *eventWriter) finish(keys map[string]keyFigures) {
	e.write(event{Kind: "finish", Keys: keys})
}

// runWorkers runs cfg.procs workers against the API at base and feeds
// their events to t. On an interrupt the workers get SIGINT (a terminal
// sends it to them too) and report what they did before they exit. It
// returns an error if a worker could not start its sync.
func runWorkers(ctx context.Context, cfg *config, base string, t *tally, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("-procs: cannot find this program to run copies of it: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, cfg.procs)
	lost := make([]string, cfg.procs)
	var wg sync.WaitGroup
	for i := range cfg.procs {
		cmd := workerCommand(ctx, exe, cfg, base, workerID{i, cfg.procs}, stderr)
		out, err := cmd.StdoutPipe()
		if err == nil {
			err = cmd.Start()
		}
		if err != nil {
			errs[i] = fmt.Errorf("worker %d: %v", i+1, err)
			cancel()
			break
		}
		wg.Go(func() {
			if lost[i], errs[i] = watchWorker(cmd, out, t); errs[i] != nil {
				errs[i] = fmt.Errorf("worker %d: %w", i+1, errs[i])
				cancel() // the others stop too: the run cannot be whole
			}
		})
	}
	wg.Wait()
	// Only now are the jobs no worker reported on those of the workers
	// lost: the others have reported all of theirs.
	for _, why := range lost {
		if why != "" {
			t.lost(why)
		}
	}
	return errors.Join(errs...)
}

func workerCommand(ctx context.Context, exe string, cfg *config, base string, w workerID, stderr io.Writer) *exec.Cmd {
	args := []string{"-backend", cfg.backend}
	var server string
	switch cfg.backend {
	case "sqlite":
		args = append(args, "-sqlite", cfg.sqlitePath)
	case "redis":
		server = cfg.redisAddr
	case "postgres":
		server = cfg.postgresURL
	}
	args = append(args,
		"-tenants", strconv.Itoa(cfg.tenants), "-jobs", strconv.Itoa(cfg.jobs),
		"-rate", strconv.Itoa(cfg.rate), "-burst", strconv.Itoa(cfg.burst), "-quota", cfg.quota, "-inflight", strconv.Itoa(cfg.inflight),
		"-workers", strconv.Itoa(cfg.workers), "-procs", strconv.Itoa(cfg.procs),
		"-target", base, "-v="+strconv.FormatBool(cfg.verbose),
	)
	if cfg.learn {
		args = append(args, "-learn", "-floor", strconv.Itoa(cfg.floor))
	}

	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(),
		envWorker+"="+strconv.Itoa(w.index)+"/"+strconv.Itoa(w.count),
		envPrefix+"="+cfg.prefix,
		envServer+"="+server)
	if cfg.metrics != "" {
		cmd.Env = append(cmd.Env, envMetrics+"="+workerMetricsAddr(cfg, w.index))
	}
	cmd.Stderr = stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second // then it is killed
	return cmd
}

// errWorkerLost marks a worker that exited without reporting.
var errWorkerLost = errors.New("exited before it finished")

// watchWorker feeds a worker's events to t until it exits. If it exited
// without finishing, it returns why: the jobs it never reported on count
// as failed once every worker has exited.
func watchWorker(cmd *exec.Cmd, out io.Reader, t *tally) (lost string, err error) {
	var startErr error
	finished := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var ev event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // not ours: a worker writes nothing else, but stay robust
		}
		switch ev.Kind {
		case "request":
			t.request(ev.Tenant, time.Unix(0, ev.At), ev.Status)
		case "done":
			t.outcome(ev.Tenant, ev.Result, ev.Err)
		case "learned":
			t.learned(ev.Tenant, time.Unix(0, ev.At), ev.Interval)
		case "finish":
			t.finish(ev.Keys)
			finished = true
		case "error":
			startErr = errors.New(ev.Err)
		}
	}
	werr := cmd.Wait()
	switch {
	case startErr != nil:
		return "", startErr
	case !finished:
		return fmt.Sprintf("a worker process %v (%v)", errWorkerLost, werr), nil
	}
	return "", nil
}
