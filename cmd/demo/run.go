package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/leakybucket/leakybucket/internal/cmdflag"
	"github.com/mattn/go-isatty"
	"golang.org/x/term"
)

// runParent runs the demo: the mock API (unless -target), the sync in this
// process or in -procs workers, then the summary and the chart.
func runParent(ctx context.Context, cfg *config, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "demo: %v\n", oneLine(err.Error()))
		return exitUsage
	}
	cfg.prefix = newPrefix()
	if cfg.backend == "sqlite" && cfg.sqlitePath == "" {
		// A file of this run's own: buckets left by an earlier run (a
		// quota used up) or shared with another run would skew its rates.
		dir, err := os.MkdirTemp("", "leakybucket-demo-")
		if err != nil {
			return fail(err)
		}
		defer os.RemoveAll(dir)
		cfg.sqlitePath = filepath.Join(dir, "buckets.db")
	}
	st, err := openBackend(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	if cfg.backend == "postgres" {
		defer dropPostgresSchema(cfg) // after st.close
	}
	defer st.close()
	if err := checkLeases(cfg, st); err != nil {
		return fail(err)
	}
	if err := checkLearning(cfg, st); err != nil {
		return fail(err)
	}
	base, arrivals := cfg.target, func() map[string][]arrival { return nil }
	var peak func(tenant string) int // what the mock saw in flight; nil against a -target
	var hidden *hiddenAPI            // -learn's mock API
	switch {
	case base == "" && cfg.learn:
		if hidden, err = startHiddenAPI(cfg); err != nil {
			return fail(fmt.Errorf("mock API: %v", err))
		}
		defer hidden.Close()
		base, arrivals = hidden.URL(), hidden.arrivals
	case base == "":
		api, err := startMockAPI(cfg.limit, randomLatency(cfg.latency))
		if err != nil {
			return fail(fmt.Errorf("mock API: %v", err))
		}
		defer api.Close()
		base, arrivals, peak = api.URL(), api.Arrivals, api.Peak
	}
	var metrics net.Listener
	if cfg.procs == 1 {
		if metrics, err = listenMetrics(cfg); err != nil {
			return fail(err)
		}
	}
	if !cfg.json {
		writeHeader(stdout, cfg, base, metrics)
	}

	t := newTally(cfg)
	if hidden != nil {
		t.start = hidden.start // the hidden limit's schedule runs from it
	}
	prog := startProgress(cfg, t, peak, stdout, isTerminal(stdout))
	if cfg.procs == 1 {
		err = syncItems(ctx, cfg, st.Backend, base, share(cfg, 0, 1), t, metrics)
	} else {
		err = runWorkers(ctx, cfg, base, t, stderr)
	}
	elapsed := time.Since(t.start)
	prog.stop()
	if err != nil {
		return fail(err)
	}
	s := summarize(cfg, t, arrivals(), peak, elapsed, ctx.Err() != nil)
	return report(cfg, s, t, arrivals(), stdout, stderr)
}

// report prints the summary, writes the chart and returns the exit status.
func report(cfg *config, s summary, t *tally, arrivals map[string][]arrival, stdout, stderr io.Writer) int {
	if cfg.json {
		writeJSON(stdout, s)
	} else {
		writeTable(stdout, s)
	}
	code := exitOK
	if cfg.plot != "" {
		write := func() error { return writePlot(cfg.plot, chartData(t, arrivals), s) }
		if cfg.learn {
			write = func() error { return writeLearnPlot(cfg.plot, learnChartData(cfg, t, arrivals), s) }
		}
		if err := write(); err != nil {
			fmt.Fprintf(stderr, "demo: -plot: %v\n", err)
			code = exitFailed
		} else if !cfg.json {
			fmt.Fprintf(stdout, "chart: %s\n", cfg.plot)
		}
	}
	switch {
	case s.Interrupted:
		return exitInterrupted
	case s.Failed > 0 || s.OverCap > 0:
		return exitFailed
	}
	return code
}

func writeHeader(w io.Writer, cfg *config, base string, metrics net.Listener) {
	limit := "limit " + cfg.limit.String()
	if cfg.learn {
		limit = fmt.Sprintf("limit learned from %d/s (-floor) to %d/s (-rate)", cfg.floor, cfg.rate)
	}
	fmt.Fprintf(w, "leakybucket demo: %d tenants × %d items, %s per tenant: %s\n",
		cfg.tenants, cfg.jobs, limit, aboutDuration(estimate(cfg)))
	where := cfg.backend + " backend"
	switch cfg.backend {
	case "sqlite":
		where += " " + cfg.sqlitePath
	case "redis":
		if opts, err := cmdflag.RedisOptions(cfg.redisAddr); err == nil {
			where += " " + opts.Addr // not the URL: it may hold a password
		}
		where += ", keys " + cfg.prefix + "*"
	case "postgres":
		if pc, err := pgxpool.ParseConfig(cfg.postgresURL); err == nil {
			where += fmt.Sprintf(" %s:%d", pc.ConnConfig.Host, pc.ConnConfig.Port) // not the URL: it may hold a password
		}
		where += ", schema " + postgresSchema(cfg)
	}
	fmt.Fprintf(w, "%s · %s × %d workers\n", where, plural(cfg.procs, "process", "processes"), cfg.workers)
	switch {
	case cfg.hidden != nil:
		fmt.Fprintf(w, "mock API %s: hidden limit per tenant %s; %s\n", base, scheduleString(cfg.hidden), familyString(cfg.family))
	case cfg.target == "":
		rate := cfg.limit.WithInflight(0)
		fmt.Fprintf(w, "mock API %s: 429 to a tenant over %s (x/time/rate, burst %d: %v of jitter forgiven)",
			base, rate, withJitterAllowance(rate).Burst, jitterAllowance)
		if cfg.inflight > 0 {
			fmt.Fprintf(w, " or over %d in flight", cfg.inflight)
		}
		if cfg.latency.max > 0 {
			fmt.Fprintf(w, "; answers in %s", cfg.latency.String())
		}
		fmt.Fprintln(w)
	default:
		fmt.Fprintf(w, "target %s\n", base)
	}
	if cfg.metrics != "" {
		fmt.Fprintf(w, "metrics %s\n", metricsURL(cfg, metrics))
	}
	fmt.Fprintln(w)
}

// estimate is how long a tenant's items take at its limit: the burst at
// once, then one per interval, and a whole window for each quota's worth;
// under a cap, at least the mock's mean time to answer for every
// -inflight of them. With -learn's mock API it is three steps of the
// hidden limit, as the schedule is made.
func estimate(cfg *config) time.Duration {
	if cfg.hidden != nil {
		return 3 * cfg.hidden[1].At // at the hidden limit, three steps
	}
	n := int64(cfg.jobs)
	d := time.Duration(max(n-int64(cfg.burst), 0)) * cfg.limit.Interval()
	for _, q := range cfg.limit.Quotas {
		d = max(d, time.Duration((n-1)/q.Max)*q.Window)
	}
	if cfg.inflight > 0 {
		d = max(d, time.Duration((n+int64(cfg.inflight)-1)/int64(cfg.inflight))*cfg.latency.mean())
	}
	return d
}

func aboutDuration(d time.Duration) string {
	if d < time.Second {
		return "under a second"
	}
	return "about " + d.Round(time.Second).String()
}

// isTerminal reports whether w is a terminal that bars can be drawn on:
// one that reports a width (a pseudo-terminal left at 0×0 does not, and
// bars on it show nothing).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	if isatty.IsCygwinTerminal(f.Fd()) {
		return true
	}
	width, _, err := term.GetSize(int(f.Fd())) // fails on anything but a terminal
	return err == nil && width > 0
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
