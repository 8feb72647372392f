package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/internal/cmdflag"
)

// config is what the flags say, checked.
type config struct {
	backend     string // memory, sqlite, redis or postgres
	sqlitePath  string
	redisAddr   string
	postgresURL string

	duration time.Duration
	warmup   time.Duration // set from duration unless -warmup is given
	sample   time.Duration // set from duration and warmup unless -sample is given

	keysPerMinute int
	keyLife       time.Duration
	workers       int
	queue         int
	retryAfter    float64 // fraction of jobs whose first run asks for a retry-after
	sweep         time.Duration
	seed          uint64

	out  string // JSON lines of samples
	plot string // chart, .svg or .png
}

// Defaults and bounds.
const (
	maxWarmup     = 5 * time.Minute  // the default warm-up is a fifth of the run, at most this
	maxSample     = 10 * time.Second // the default sample interval, at most this
	minJudged     = 6                // samples after warm-up, at the fewest, for a judgement
	defaultJudged = 30               // samples after warm-up the default interval aims at
)

func newFlagSet(cfg *config) *flag.FlagSet {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	cmdflag.BackendFlags(fs, &cfg.backend, &cfg.sqlitePath, &cfg.redisAddr, &cfg.postgresURL)
	fs.DurationVar(&cfg.duration, "duration", time.Minute, "how long to run at full speed, a `duration` such as 60s or 30m")
	fs.DurationVar(&cfg.warmup, "warmup", 0, "the start of the run that is not judged (default: a fifth of -duration, at most 5m)")
	fs.DurationVar(&cfg.sample, "sample", 0, "the `interval` between samples (default: 10s, or less so that 30 samples fall after the warm-up)")
	cfg.keysPerMinute = 100_000
	fs.Var((*cmdflag.Int)(&cfg.keysPerMinute), "keys-per-minute", "`N` new keys a minute")
	fs.DurationVar(&cfg.keyLife, "key-life", 5*time.Second, "how long a key lives: a job when it is born, one when it dies, some between, and none after")
	cfg.workers = 64
	fs.Var((*cmdflag.Int)(&cfg.workers), "workers", "`N` workers")
	cfg.queue = 4096
	fs.Var((*cmdflag.Int)(&cfg.queue), "queue", "`N` jobs that may wait to start (Submit blocks beyond)")
	fs.Float64Var(&cfg.retryAfter, "retry-after", 0.003, "the `fraction` of jobs whose first run answers with a retry-after, as a 429 would")
	fs.DurationVar(&cfg.sweep, "sweep", 2*time.Second, "how often memory, sqlite and postgres sweep idle keys (their SweepInterval; Redis expires keys itself)")
	fs.Uint64Var(&cfg.seed, "seed", 1, "`seed` of the jobs' random keys, costs, durations and retry-afters")
	fs.StringVar(&cfg.out, "out", "", "write every sample as a line of JSON to `FILE`")
	fs.StringVar(&cfg.plot, "plot", "", "write a chart of the samples to `FILE` (.svg or .png)")
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
	if err := cfg.check(set); err != nil {
		return nil, err
	}
	return cfg, nil
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage: soak [flags]

Runs a leakybucket Dispatcher at full speed against one backend for
-duration: -keys-per-minute new keys a minute, each given jobs for -key-life
and then never again, jobs of random cost and duration, a few retry-afters
per thousand, limits with and without an inflight cap and a quota. It
samples the Go heap, goroutines, open files and the backend's own size every
-sample, and fails if any of them keeps growing after the warm-up: the mean
of the last third of the samples after it more than 10% (and more than a
small floor) above the mean of the first third, with a rising least-squares
slope. docs/guarantees.md ("Soak") says more.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, `
Examples:
  soak                                       memory backend, 60 s
  soak -backend sqlite -duration 30m -plot soak.svg -out soak.jsonl
  soak -backend redis -duration 30m
  soak -backend postgres -duration 30m

Exit status: 0 when nothing grew and every job was resolved, 1 when a
resource grew, a job was lost or failed or the dispatcher did not shut down
cleanly (a line on stderr for each), 2 for bad flags or an unreachable
backend, 130 when interrupted (the report so far is printed).
`)
}

func (c *config) check(set map[string]bool) error {
	for _, f := range []func() error{c.checkLoad, func() error { return c.checkTimes(set) }} {
		if err := f(); err != nil {
			return err
		}
	}
	if err := checkOutput("-out", c.out, nil); err != nil {
		return err
	}
	return checkOutput("-plot", c.plot, []string{".svg", ".png"})
}

func (c *config) checkLoad() error {
	for _, f := range []struct {
		name     string
		val, max int
	}{
		{"keys-per-minute", c.keysPerMinute, 100_000_000},
		{"workers", c.workers, 10_000},
		{"queue", c.queue, 10_000_000},
	} {
		if f.val < 1 || f.val > f.max {
			return fmt.Errorf("-%s %d: want a whole number from 1 to %d", f.name, f.val, f.max)
		}
	}
	switch {
	case c.retryAfter < 0 || c.retryAfter > 0.5 || c.retryAfter != c.retryAfter:
		return fmt.Errorf("-retry-after %v: want a fraction from 0 to 0.5", c.retryAfter)
	case c.keyLife < time.Millisecond:
		return fmt.Errorf("-key-life %v: want 1ms or more", c.keyLife)
	case c.sweep < 100*time.Millisecond:
		return fmt.Errorf("-sweep %v: want 100ms or more", c.sweep)
	}
	return nil
}

// checkTimes checks -duration and fills in the default -warmup and
// -sample: the run must leave at least minJudged samples after warm-up.
func (c *config) checkTimes(set map[string]bool) error {
	if c.duration < time.Second {
		return fmt.Errorf("-duration %v: want 1s or more", c.duration)
	}
	if !set["warmup"] {
		c.warmup = min(c.duration/5, maxWarmup)
	}
	if c.warmup < 0 || c.warmup >= c.duration {
		return fmt.Errorf("-warmup %v: want at least 0 and less than -duration %v", c.warmup, c.duration)
	}
	if !set["sample"] {
		c.sample = min(maxSample, ((c.duration - c.warmup) / defaultJudged).Round(time.Millisecond))
	}
	if c.sample < 10*time.Millisecond {
		return fmt.Errorf("-sample %v: want 10ms or more", c.sample)
	}
	if n := judgedSamples(c.duration, c.warmup, c.sample); n < minJudged {
		samples := "samples"
		if n == 1 {
			samples = "sample"
		}
		return fmt.Errorf("-duration %v, -warmup %v and -sample %v leave %d %s after the warm-up: want at least %d", c.duration, c.warmup, c.sample, n, samples, minJudged)
	}
	return nil
}

// judgedSamples counts the samples k·sample (k ≥ 1) in [warmup, duration].
func judgedSamples(duration, warmup, sample time.Duration) int {
	first := max((warmup+sample-1)/sample, 1)
	return max(int(duration/sample-first+1), 0)
}

// checkOutput checks that path, if given, has one of exts (any if nil) and
// can be written, so that a run does not find out at its end.
func checkOutput(flagName, path string, exts []string) error {
	if path == "" {
		return nil
	}
	if exts != nil {
		ext := strings.ToLower(filepath.Ext(path))
		ok := false
		for _, e := range exts {
			ok = ok || ext == e
		}
		if !ok {
			return fmt.Errorf("%s %q: want a file name ending in %s", flagName, path, strings.Join(exts, " or "))
		}
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("%s %q: is a directory", flagName, path)
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("%s %q: %v", flagName, path, err)
	}
	f.Close()
	if errors.Is(statErr, os.ErrNotExist) {
		os.Remove(path)
	}
	return nil
}
