package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/internal/cmdflag"
	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// config is what the flags say, checked.
type config struct {
	backend     string // memory, sqlite, redis or postgres
	sqlitePath  string
	redisAddr   string
	postgresURL string
	tenants     int
	jobs        int
	rate        int
	burst       int
	quota       string
	inflight    int    // -inflight: 0, or each tenant's cap on requests in flight
	latency     spread // -latency: how long the mock takes to answer
	latencySet  bool
	workers     int
	procs       int
	target      string
	json        bool
	plot        string
	metrics     string // -metrics: host:port
	verbose     bool
	learn       bool   // -learn: learned limits, against a mock API whose limit is hidden
	floor       int    // -floor: the learned rate's floor, requests/s
	apiHeaders  string // -api-headers: the rate-limit headers of -learn's mock API

	given  map[string]bool  // the flags the command line set
	family limitmock.Family // -api-headers, checked
	hidden []limitmock.Step // the hidden limit of -learn's mock API; nil without it

	limit  bucket.Limit // -rate, -burst, -quota and -inflight together
	prefix string       // Redis key prefix (and PostgreSQL schema) of this run, shared with its workers
	logger *slog.Logger // to stderr with -v, else nowhere
}

// Bounds that keep a mistyped flag from launching something absurd.
const (
	maxTenants = 10_000
	maxJobs    = 10_000_000
	maxWorkers = 10_000
	maxProcs   = 64
)

func newFlagSet(cfg *config) *flag.FlagSet {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	cmdflag.BackendFlags(fs, &cfg.backend, &cfg.sqlitePath, &cfg.redisAddr, &cfg.postgresURL)
	cfg.tenants = 4
	fs.Var((*cmdflag.Int)(&cfg.tenants), "tenants", "number of tenants, named tenant-1 … tenant-`K`")
	cfg.jobs = 100
	fs.Var((*cmdflag.Int)(&cfg.jobs), "jobs", fmt.Sprintf("`N` items to sync per tenant (with -learn, default %d)", learnJobs))
	cfg.rate = 20
	fs.Var((*cmdflag.Int)(&cfg.rate), "rate", fmt.Sprintf("`N` requests per second allowed per tenant; with -learn, the ceiling of what it learns (default %d then)", learnRate))
	cfg.burst = 1
	fs.Var((*cmdflag.Int)(&cfg.burst), "burst", "bucket burst: `N` requests may go back-to-back after idle")
	fs.StringVar(&cfg.quota, "quota", "", "optional rolling quota per tenant, `N/P` such as 500/1h (several: 500/1h,5000/1d)")
	fs.Var((*cmdflag.Int)(&cfg.inflight), "inflight", "at most `N` requests of a tenant in flight at once, across all processes (0: no cap); the mock API answers 429 to one more")
	fs.Var(&cfg.latency, "latency", "how long the mock API takes to answer a request, drawn uniformly from `MIN-MAX` such as 10ms-30ms (default 20ms-80ms with -inflight, else at once)")
	cfg.workers = 16
	fs.Var((*cmdflag.Int)(&cfg.workers), "workers", "`N` workers per process")
	cfg.procs = 1
	fs.Var((*cmdflag.Int)(&cfg.procs), "procs", "`N` worker processes sharing the backend (copies of this program)")
	fs.StringVar(&cfg.target, "target", "", "base `URL` of a real API to sync against instead of the mock")
	fs.BoolVar(&cfg.json, "json", false, "no progress; print one JSON summary object on stdout")
	fs.StringVar(&cfg.plot, "plot", "", "write a chart of requests per second per tenant to `FILE` (.svg or .png)")
	fs.StringVar(&cfg.metrics, "metrics", "", "serve the dispatcher's Prometheus metrics on http://`ADDR`/metrics while the demo runs (host:port; with -procs P, worker i serves on port+i)")
	fs.BoolVar(&cfg.verbose, "v", false, "log every request attempt to stderr (no progress bars)")
	fs.BoolVar(&cfg.learn, "learn", false, "learn each tenant's limit from the API's answers, between -floor and -rate; the mock API hides its limit, which changes mid-run")
	fs.Var((*cmdflag.Int)(&cfg.floor), "floor", "with -learn, the slowest a tenant's learned rate may go, `N` requests per second (default -rate/100, at least 1)")
	cfg.apiHeaders = string(limitmock.IETF)
	fs.StringVar(&cfg.apiHeaders, "api-headers", cfg.apiHeaders, "with -learn, the rate-limit headers the mock API answers with, a `family`: ietf (RateLimit-Policy and RateLimit), github (X-RateLimit-*) or none (a bare 429)")
	return fs
}

// parseFlags reads args. -help prints the usage to stdout and returns
// flag.ErrHelp; any other error is one line naming the flag.
func parseFlags(args []string, stdout io.Writer) (*config, error) {
	cfg := new(config)
	set, err := cmdflag.Parse(newFlagSet(cfg), args, usage, stdout)
	if err != nil {
		return nil, err
	}
	cfg.latencySet = set["latency"]
	cfg.given = set
	if cfg.learn && !set["rate"] {
		cfg.rate = learnRate
	}
	if cfg.learn && !set["jobs"] {
		cfg.jobs = learnJobs
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.logger = slog.New(slog.DiscardHandler)
	if cfg.verbose {
		cfg.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg, nil
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage: demo [flags]

Syncs -jobs items for each of -tenants tenants from a rate-limited API, each
tenant held to -rate requests per second by a leakybucket Dispatcher, and
prints what the API saw. Without -target the API is a mock on loopback that
answers 429 to any tenant going over its limit.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, `
Examples:
  demo                                   memory backend, 4 tenants × 100 items at 20/s
  demo -backend sqlite -procs 3          3 processes sharing one SQLite file
  demo -backend redis -procs 2 -json     2 processes sharing Redis, JSON summary
  demo -backend postgres -procs 4        4 processes sharing buckets in PostgreSQL
  demo -inflight 3 -rate 100             at most 3 requests of a tenant in flight: the cap binds
  demo -plot rate.svg                    also chart requests per second per tenant
  demo -learn                            the API hides its limit and changes it mid-run: each tenant learns it
  demo -learn -api-headers none          … from 429s alone, no rate-limit headers
  demo -jobs 2000 -metrics :9090         serve Prometheus metrics while it runs

With -learn the mock API's limit per tenant is hidden from the demo: 3/4 of
-rate, then 1/4 from the run's middle third, then 1/2 (30/s, 10/s, 20/s by
default), told in the headers of -api-headers; each tenant's limit is
learned from the answers, -rate its ceiling and -floor its floor, and the
summary says how much of what the hidden limit allowed the demo used.

Exit status: 0 when every item synced, 1 when a job failed or the mock API saw
a tenant over -inflight, 2 for bad flags or an unreachable backend, 130 when
interrupted.
`)
}

func (c *config) check() error {
	checks := []func() error{c.checkBackend, c.checkCounts, c.checkTarget, c.checkInflight, c.checkLearn, c.checkLimit, c.checkPlot, c.checkMetrics}
	for _, f := range checks {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// checkBackend refuses -procs with the memory backend; cmdflag.Parse
// has checked the rest.
func (c *config) checkBackend() error {
	if c.backend == "memory" && c.procs > 1 {
		return fmt.Errorf("-procs %d needs a backend the processes share, and the memory backend lives inside one process: use -backend sqlite, redis or postgres", c.procs)
	}
	return nil
}

func (c *config) checkCounts() error {
	for _, f := range []struct {
		name     string
		val, max int
	}{
		{"tenants", c.tenants, maxTenants},
		{"jobs", c.jobs, maxJobs},
		{"workers", c.workers, maxWorkers},
		{"procs", c.procs, maxProcs},
		{"rate", c.rate, 1_000_000_000},
		{"burst", c.burst, 1_000_000_000},
	} {
		if f.val < 1 || f.val > f.max {
			return fmt.Errorf("-%s %d: want a whole number from 1 to %d", f.name, f.val, f.max)
		}
	}
	return nil
}

func (c *config) checkLimit() error {
	lim := bucket.PerSecond(int64(c.rate)).WithBurst(int64(c.burst)).WithInflight(int64(c.inflight))
	if c.learn {
		lim = lim.WithFloor(int64(c.floor), time.Second)
	}
	if c.quota != "" {
		for q := range strings.SplitSeq(c.quota, ",") {
			q = strings.TrimSpace(q)
			max, window, err := parseQuota(q)
			switch {
			case err != nil && strings.Contains(err.Error(), strconv.Quote(q)):
				return fmt.Errorf("-quota: %v", err)
			case err != nil:
				return fmt.Errorf("-quota %q: %v", q, err)
			}
			lim = lim.WithQuota(max, window)
		}
	}
	if err := lim.Validate(); err != nil {
		return fmt.Errorf("-rate %d -burst %d -quota %q: %v", c.rate, c.burst, c.quota, reason(err))
	}
	c.limit = lim
	return nil
}

// parseQuota reads "N/P" with bucket.Parse's syntax for a rate.
func parseQuota(s string) (int64, time.Duration, error) {
	l, err := bucket.Parse(s)
	switch {
	case !strings.Contains(s, "/"):
		return 0, 0, fmt.Errorf("%q is not of the form N/P (for example 500/1h)", s)
	case err != nil:
		return 0, 0, errors.New(reason(err))
	case l.IsUnlimited() || l.Burst != 1 || len(l.Quotas) > 0 || strings.ContainsAny(s, " =\t"):
		return 0, 0, fmt.Errorf("%q is not of the form N/P (for example 500/1h)", s)
	}
	return l.Rate, l.Period, nil
}

// reason strips a *bucket.LimitError down to what the user typed wrong.
func reason(err error) string {
	if le, ok := errors.AsType[*bucket.LimitError](err); ok {
		return le.Reason
	}
	return err.Error()
}

func (c *config) checkTarget() error {
	if c.target == "" {
		return nil
	}
	u, err := url.Parse(c.target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-target %q: want an http:// or https:// URL", c.target)
	}
	c.target = strings.TrimSuffix(c.target, "/")
	return nil
}

func (c *config) checkPlot() error {
	if c.plot == "" {
		return nil
	}
	switch strings.ToLower(filepath.Ext(c.plot)) {
	case ".svg", ".png":
	default:
		return fmt.Errorf("-plot %q: want a file name ending in .svg or .png", c.plot)
	}
	if fi, err := os.Stat(filepath.Dir(c.plot)); err != nil || !fi.IsDir() {
		return fmt.Errorf("-plot %q: no directory %s to write it in", c.plot, filepath.Dir(c.plot))
	}
	fi, statErr := os.Stat(c.plot)
	if statErr == nil && fi.IsDir() {
		return fmt.Errorf("-plot %q: is a directory", c.plot)
	}
	// Find out now, not after the run, that the file cannot be written.
	f, err := os.OpenFile(c.plot, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("-plot %q: %v", c.plot, err)
	}
	f.Close()
	if errors.Is(statErr, os.ErrNotExist) {
		os.Remove(c.plot)
	}
	return nil
}

// tenantNames returns tenant-1 … tenant-K.
func (c *config) tenantNames() []string {
	names := make([]string, c.tenants)
	for i := range names {
		names[i] = fmt.Sprintf("tenant-%d", i+1)
	}
	return names
}
