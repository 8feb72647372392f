// Command benchmarks measures leakybucket side by side with the libraries
// its users would pick instead (SPEC §8): golang.org/x/time/rate,
// go.uber.org/ratelimit, github.com/alitto/pond/v2,
// github.com/panjf2000/ants/v2, golang.org/x/sync/errgroup,
// github.com/go-redis/redis_rate/v10 and the AWS SDK v2's adaptive retry
// mode (github.com/aws/aws-sdk-go-v2/aws/retry), in one run on one
// machine.
//
//	cd benchmarks && go run .                 # every comparison, as a table
//	go run . -json                            # one JSON object per measurement
//	go run . -run 'pacing|limiter'            # a subset, by regexp on names
//	go run . -plot ../docs/benchmarks.svg     # and charts (…-pacing.svg beside it)
//	go run . -markdown -save results.jsonl    # a Markdown table, and the figures kept
//	go run . -replot results.jsonl -plot x.png  # the charts again, from kept figures
//
// Each figure is the median of -reps repetitions (default 5), run
// interleaved with its anchor's, with the range of the repetitions as its
// spread. Redis comparisons use REDIS_ADDR, else 127.0.0.1:6379, else a
// redis-server from PATH on a free port, else they are skipped with a note.
// The whole run takes about six minutes on a 2-core machine, two of them
// in the comparisons of a million keys. The learn rows (learned limits
// against a mock API, 30 s a contender and repetition) run only when -run
// names them: go run . -run learn/ -reps 3 takes about 30 minutes.
//
// It lives in its own module so that the main module never depends on the
// libraries it is compared with.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// A comparison is one line of SPEC §8: it runs its contenders and reports
// one or more measurements.
type comparison struct {
	name string
	run  func(r *reporter)
}

// long reports a comparison of minutes, run only when -run names it: the
// learn rows, 30 s a contender and repetition.
func (c comparison) long() bool { return strings.HasPrefix(c.name, "learn/") }

// comparisons lists every comparison in the order they run.
var comparisons = []comparison{
	{"limiter/allow/goroutines=1", limiterAllow(1)},
	{"limiter/allow/goroutines=8", limiterAllow(8)},
	{"limiter/keys=1000/goroutines=1", limiterKeys(1)},
	{"limiter/keys=1000/goroutines=8", limiterKeys(8)},
	{"dispatcher/limiter=none", poolThroughput(false)},
	{"dispatcher/limiter=memstore/keys=1000", poolThroughput(true)},
	{"dispatcher/exporter=prometheus/keys=1000", exporterOverhead("Prometheus exporter", "a scrape through promhttp", prometheusExporter)},
	{"dispatcher/exporter=otel/keys=1000", exporterOverhead("OpenTelemetry metrics", "a ManualReader's collection", otelExporter)},
	{"dispatcher/queued-job-memory", queuedMemory},
	{"dispatcher/key-memory", keyMemory},
	{"scale/keys=10000", scale(10_000)},
	{"scale/keys=100000", scale(100_000)},
	{"scale/keys=1000000", scale(1_000_000)},
	{"scale/stats", statsScale},
	{"redis/admit/callers=1/keys=1", redisAdmit(1, 1)},
	{"redis/admit/callers=1/keys=1000", redisAdmit(1, 1000)},
	{"redis/admit/callers=16/keys=1", redisAdmit(16, 1)},
	{"redis/admit/callers=16/keys=1000", redisAdmit(16, 1000)},
	{"redis/dispatcher/keys=1000", redisDispatcher},
	{"redis/scale/keys=10000", redisScale(10_000)},
	{"redis/scale/keys=100000", redisScale(100_000)},
	{"redis/scale/keys=1000000", redisScale(1_000_000)},
	{"postgres/admit/callers=1/keys=1000", postgresAdmit(1, 1000)},
	{"postgres/admit/callers=16/keys=1000", postgresAdmit(16, 1000)},
	{"postgres/dispatcher/procs=4/keys=1000", postgresDispatch(4)},
	{"sqlite/procs=1", sqliteProcs(1)},
	{"sqlite/procs=4", sqliteProcs(4)},
	{"sqlite/scale/keys=100000", sqliteScale(100_000)},
	{"sqlite/scale/keys=1000000", sqliteScale(1_000_000)},
	{"pacing/rate=1000/waiters=16", pacingWaiters},
	{"pacing/stall=20ms/waiter", pacingStall},
	{"pacing/rate=10000/burst=1", pacingHigh},
	{"pacing/dispatcher/rate=1000", pacingDispatcher(1000)},
	{"pacing/dispatcher/rate=10000", pacingDispatcher(10000)},
	{"pacing/dispatcher/stall=20ms", pacingDispatcherStall},
	{"inflight/memstore/dispatchers=1", inflightMem(1)},
	{"inflight/memstore/dispatchers=4", inflightMem(4)},
	{"inflight/redis/procs=4", inflightRedis(4)},
	{"learn/memstore/headers=ietf", learnCompare("memstore", 1, limitmock.IETF)},
	{"learn/memstore/headers=github", learnCompare("memstore", 1, limitmock.GitHub)},
	{"learn/memstore/headers=none", learnCompare("memstore", 1, limitmock.None)},
	{"learn/redis/procs=3/headers=ietf", learnCompare("redis", 3, limitmock.IETF)},
	{"learn/redis/procs=3/headers=github", learnCompare("redis", 3, limitmock.GitHub)},
	{"learn/redis/procs=3/headers=none", learnCompare("redis", 3, limitmock.None)},
}

// A Measurement is one figure of ours beside the anchor's.
type Measurement struct {
	Name   string `json:"name"`
	Metric string `json:"metric"`
	Unit   string `json:"unit"`
	Better string `json:"better"` // "higher" or "lower"

	OursName   string   `json:"ours_name"`
	AnchorName string   `json:"anchor_name,omitempty"`
	Ours       float64  `json:"ours"`
	Anchor     *float64 `json:"anchor"` // null where no library does the same
	Ratio      *float64 `json:"ratio"`  // ours / anchor
	Spread     Spread   `json:"spread"`
	Reps       int      `json:"reps"`

	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
	Note   string `json:"note,omitempty"`
}

// Spread is the range [min, max] of the repetitions behind a median.
type Spread struct {
	Ours   [2]float64  `json:"ours"`
	Anchor *[2]float64 `json:"anchor,omitempty"`
}

// A target is a bound ours must meet.
type target struct {
	text string
	ok   func(ours float64) bool
}

func atLeast(v float64, text string) *target {
	return &target{text, func(o float64) bool { return o >= v }}
}

func atMost(v float64, text string) *target {
	return &target{text, func(o float64) bool { return o <= v }}
}

// A reporter collects the measurements of a run and prints them as they
// come.
type reporter struct {
	comparison string
	reps       int
	jsonOut    bool
	out        io.Writer
	all        []Measurement
	skipped    []string
}

// metricSpec describes how to read and show one metric.
type metricSpec struct {
	key    string // key in the samples
	label  string // what is measured, for the table
	unit   string
	better string
	target *target
	note   string
}

// compare reports the metric of ours against one anchor (anchor may be
// nil: no library does the same).
func (r *reporter) compare(ms metricSpec, oursName string, ours []sample, anchorName string, anchor []sample) {
	o := summarize(ours, ms.key)
	m := Measurement{
		Name:     r.comparison,
		Metric:   ms.label,
		Unit:     ms.unit,
		Better:   ms.better,
		OursName: oursName,
		Ours:     o.Median,
		Spread:   Spread{Ours: [2]float64{o.Min, o.Max}},
		Reps:     o.N,
		Note:     ms.note,
	}
	if anchor != nil {
		a := summarize(anchor, ms.key)
		m.AnchorName = anchorName
		m.Anchor = ptr(a.Median)
		m.Spread.Anchor = &[2]float64{a.Min, a.Max}
		if a.Median != 0 {
			m.Ratio = ptr(o.Median / a.Median)
		}
	}
	if ms.target != nil {
		m.Target = ms.target.text
		m.Met = ptr(ms.target.ok(o.Median))
	}
	r.add(m)
}

func (r *reporter) add(m Measurement) {
	for _, v := range []*float64{&m.Ours, m.Anchor, m.Ratio} {
		if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
			*v = 0
		}
	}
	r.all = append(r.all, m)
	if r.jsonOut {
		b, _ := json.Marshal(m)
		fmt.Fprintln(r.out, string(b))
	}
}

// skip notes a comparison that could not run.
func (r *reporter) skip(why string) {
	r.skipped = append(r.skipped, r.comparison+": "+why)
	if r.jsonOut {
		b, _ := json.Marshal(map[string]string{"name": r.comparison, "skipped": why})
		fmt.Fprintln(r.out, string(b))
	} else {
		fmt.Fprintf(os.Stderr, "skipped %s: %s\n", r.comparison, why)
	}
}

func ptr[V any](v V) *V { return &v }

func main() {
	var (
		runRe   = flag.String("run", "", "run only the comparisons whose name matches this regexp")
		jsonOut = flag.Bool("json", false, "print one JSON object per measurement instead of a table")
		plotTo  = flag.String("plot", "", "write a chart of the results to this file (.svg or .png)")
		reps    = flag.Int("reps", 5, "repetitions behind each median")
		list    = flag.Bool("list", false, "list the comparisons and exit")
		md      = flag.Bool("markdown", false, "print the table as Markdown")
		save    = flag.String("save", "", "also write the measurements to this file, one JSON object a line")
		replot  = flag.String("replot", "", "draw the -plot charts from a file written by -save or -json, without running anything")
		cpuProf = flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
		memProf = flag.String("memprofile", "", "write an allocation profile of the run to this file")
	)
	childFlags()
	flag.Parse()
	if isChild() {
		runChild()
		return
	}
	if *replot != "" {
		if err := replotFrom(*replot, *plotTo); err != nil {
			fmt.Fprintf(os.Stderr, "benchmarks: -replot: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if *list {
		for _, c := range comparisons {
			if c.long() {
				fmt.Println(c.name, "(long: only with -run)")
			} else {
				fmt.Println(c.name)
			}
		}
		return
	}
	if *reps < 1 {
		fmt.Fprintln(os.Stderr, "benchmarks: -reps must be at least 1")
		os.Exit(2)
	}
	re, err := regexp.Compile(*runRe)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchmarks: -run: %v\n", err)
		os.Exit(2)
	}
	r := &reporter{reps: *reps, jsonOut: *jsonOut, out: os.Stdout}
	if *memProf != "" {
		runtime.MemProfileRate = 512
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchmarks: %v\n", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	start := time.Now()
	if !*jsonOut {
		printMachine(os.Stdout)
		fmt.Printf("run: %s, %d repetitions per figure\n\n", start.UTC().Format("2006-01-02 15:04 MST"), *reps)
	}
	ran := 0
	for _, c := range comparisons {
		if !re.MatchString(c.name) || c.long() && *runRe == "" {
			continue
		}
		ran++
		r.comparison = c.name
		t0 := time.Now()
		c.run(r)
		if !*jsonOut {
			fmt.Fprintf(os.Stderr, "%-40s %6.1fs\n", c.name, time.Since(t0).Seconds())
		}
	}
	cleanup()
	if *memProf != "" {
		if f, err := os.Create(*memProf); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	if ran == 0 {
		fmt.Fprintf(os.Stderr, "benchmarks: no comparison matches %q (see -list)\n", *runRe)
		os.Exit(2)
	}
	if !*jsonOut {
		fmt.Println()
		if *md {
			printMarkdown(os.Stdout, r.all)
		} else {
			printTable(os.Stdout, r.all)
		}
		for _, s := range r.skipped {
			fmt.Println("skipped:", s)
		}
		if n := abandoned.Load(); n > 0 {
			fmt.Printf("note: %d Dispatcher runs did not finish within their bound; only the jobs they completed count\n", n)
		}
		fmt.Printf("\ntotal %.0fs", time.Since(start).Seconds())
		if load, err := os.ReadFile("/proc/loadavg"); err == nil {
			fmt.Printf(", load average at the end: %s", strings.Join(strings.Fields(string(load))[:3], " "))
		}
		fmt.Println()
	}
	if *save != "" {
		if err := saveResults(*save, r.all); err != nil {
			fmt.Fprintf(os.Stderr, "benchmarks: -save: %v\n", err)
			os.Exit(1)
		}
	}
	if *plotTo != "" {
		if err := plotResults(*plotTo, r.all); err != nil {
			fmt.Fprintf(os.Stderr, "benchmarks: -plot: %v\n", err)
			os.Exit(1)
		}
	}
}

// verdict says how ours compares, as a factor in our favour or against.
func verdict(m Measurement) string {
	if m.Ratio == nil || *m.Ratio == 0 || m.Anchor == nil {
		return ""
	}
	f := *m.Ratio // ours/anchor
	if m.Better == "lower" {
		f = 1 / f
	}
	switch {
	case math.Abs(f-1) < 0.05:
		return "even"
	case f > 1:
		return fmt.Sprintf("%.2f× better", f)
	default:
		return fmt.Sprintf("%.2f× worse", 1/f)
	}
}

// num formats a figure with about three significant digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func spread(s [2]float64) string { return num(s[0]) + "–" + num(s[1]) }

func targetCell(m Measurement) string {
	if m.Met == nil {
		return ""
	}
	if *m.Met {
		return m.Target + " ✓"
	}
	return m.Target + " ✗"
}

func printTable(w io.Writer, ms []Measurement) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "comparison\tmetric\tunit\tours\t(spread)\tanchor\t\t(spread)\tratio\tverdict\ttarget")
	for _, m := range ms {
		a, as, ratio := "—", "", ""
		if m.Anchor != nil {
			a, as = num(*m.Anchor), spread(*m.Spread.Anchor)
		}
		if m.Ratio != nil {
			ratio = fmt.Sprintf("%.2f", *m.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			m.Name, m.Metric, m.Unit, num(m.Ours), spread(m.Spread.Ours), m.AnchorName, a, as, ratio, verdict(m), targetCell(m))
	}
	tw.Flush()
}

func printMarkdown(w io.Writer, ms []Measurement) {
	fmt.Fprintln(w, "| comparison | metric | ours | anchor | ratio | verdict | target |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | ---: | --- | --- |")
	for _, m := range ms {
		a, ratio := "—", "—"
		if m.Anchor != nil {
			a = fmt.Sprintf("%s: %s (%s)", m.AnchorName, num(*m.Anchor), spread(*m.Spread.Anchor))
		}
		if m.Ratio != nil {
			ratio = fmt.Sprintf("%.2f", *m.Ratio)
		}
		fmt.Fprintf(w, "| `%s` | %s (%s) | %s: **%s** (%s) | %s | %s | %s | %s |\n",
			m.Name, m.Metric, m.Unit, m.OursName, num(m.Ours), spread(m.Spread.Ours), a, ratio, verdict(m), strings.ReplaceAll(targetCell(m), "|", "\\|"))
	}
}

// saveResults writes ms to path, one JSON object a line, as -json prints.
func saveResults(path string, ms []Measurement) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, m := range ms {
		if err := enc.Encode(m); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// replotFrom draws the charts of the measurements saved in path.
func replotFrom(path, plotTo string) error {
	if plotTo == "" {
		return fmt.Errorf("-replot needs -plot FILE")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var ms []Measurement
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m Measurement
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return err
		}
		if m.Metric != "" { // not a "skipped" line
			ms = append(ms, m)
		}
	}
	return plotResults(plotTo, ms)
}
