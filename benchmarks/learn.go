package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// The learn comparisons (issue 16) run three clients, one after the
// other (interleaved over the repetitions, as repeat does), each against
// a fresh mock API (internal/limitmock, the same configuration for all)
// whose per-tenant limit is hidden and changes on learnSchedule, for
// learnTenants tenants, from procs child processes, each with a pool of
// learnWorkers workers:
//
//   - ours: a Dispatcher on a learned limit (learnLimit: a ceiling of
//     100/s, far above the true limit, and a floor of 1/s), its handler
//     reporting each answer with middleware.CheckResponse, the limit
//     shared by the processes through the backend;
//   - the AWS SDK v2's adaptive retry mode, per tenant and per process;
//   - a rate.Limiter per tenant at the starting limit, per process.
//
// The mock judges: goodput is its 200s over what the limit allowed (its
// integral over the run), 429s are a share of every request it answered,
// and the time back to the new limit after each change is read from its
// answers in windows of learnSlice (learnJudge). No warm-up run: every
// repetition starts afresh, mock and learned state alike.
const (
	learnTenants = 4
	learnWorkers = 8 // per process, for each contender
	learnAhead   = 8 // jobs of a tenant our side keeps submitted, per process
	learnLatency = 20 * time.Millisecond
	learnSlice   = 250 * time.Millisecond
	learnRun     = 30 * time.Second
	learnGHWin   = 10 * time.Second // the GitHub family's window: the mock's default
)

// learnSchedule is the hidden limit per tenant: 30/s, 10/s from 10 s,
// 20/s from 20 s. Its steps fall on the GitHub family's windows.
var learnSchedule = []limitmock.Step{{At: 0, Rate: 30}, {At: 10 * time.Second, Rate: 10}, {At: 20 * time.Second, Rate: 20}}

// learnLimit is our side's limit: the ceiling and the floor a user would
// configure knowing nothing of the service's limit but its order.
var learnLimit = bucket.PerSecond(100).WithFloor(1, time.Second)

// learnSeriesTo, if set, is a file the learn comparisons write their
// per-window series to, as CSV, for a look at how each contender moves.
var learnSeriesTo = flag.String("learn-series", "", "write the learn comparisons' per-250ms series to this CSV file")

// learnContenders names the three sides, by their key in a child's
// command and the samples, in the order each repetition runs them.
var learnContenders = []struct{ key, name string }{
	{"ours", "Dispatcher + learned limit + CheckResponse"},
	{"aws", "AWS SDK v2 adaptive retry mode"},
	{"fixed", "rate.Limiter 30/s per tenant"},
}

// learnCompare returns the comparison of family's headers with procs
// processes on backend ("memstore", in one process only, or "redis").
func learnCompare(backend string, procs int, family limitmock.Family) func(r *reporter) {
	return func(r *reporter) {
		spec := backend
		if backend == "redis" {
			addr, note := redisAddr()
			if addr == "" {
				r.skip(note)
				return
			}
			if err := redisLearns(addr); err != nil {
				r.skip(err.Error())
				return
			}
			spec = addr
		}
		children, stop := startChildren(procs, "-child", "learn", "-child-path", spec)
		defer stop()
		res := map[string][]sample{}
		for rep := range r.reps {
			for _, c := range learnContenders {
				res[c.key] = append(res[c.key], learnRunOnce(r.comparison, rep, c.key, children, family))
			}
		}
		learnReport(r, procs, family, res)
	}
}

// learnRuns counts the runs of this process, so that each run's keys in
// Redis are its own: what one run learned must not carry into the next.
var learnRuns int

// learnRunOnce runs one repetition of one contender: a mock server, the
// children calling it until the run's end, and the contender's figures.
func learnRunOnce(name string, rep int, contender string, children []*child, family limitmock.Family) sample {
	start := time.Now()
	if family == limitmock.GitHub {
		// Start on a window's edge (the mock aligns its windows to Unix
		// time): the run's windows then hold its schedule's steps, and
		// their quotas sum to the integral of the limit.
		start = start.Truncate(learnGHWin).Add(learnGHWin)
		time.Sleep(time.Until(start))
	}
	server, err := limitmock.Start(limitmock.Config{Schedule: learnSchedule, Headers: family,
		Window: learnGHWin, Latency: func() time.Duration { return learnLatency }})
	if err != nil {
		panic(err)
	}
	defer server.Close()
	// The server's clock started between start and now: an answer counts
	// if it came before the run's end by the latest of them.
	late := time.Since(start)
	stopAt := start.Add(learnRun)
	learnRuns++
	prefix := fmt.Sprintf("lbbench:%d:learn:%d:", os.Getpid(), learnRuns)
	for _, c := range children {
		c.say("run %s %d %s %s", contender, stopAt.UnixNano(), prefix, server.URL())
	}
	var ours []learnOursReport
	for _, c := range children {
		line := c.line()
		var rp learnOursReport
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "done ")), &rp); err != nil {
			panic(fmt.Sprintf("child said %q: %v", line, err))
		}
		ours = append(ours, rp)
	}
	changes := make([]time.Duration, 0, len(learnSchedule)-1)
	for _, st := range learnSchedule[1:] {
		changes = append(changes, st.At)
	}
	series := learnSeries(server.Answers(), learnSchedule, learnTenants, learnSlice, learnRun-late)
	s := learnJudge(series, learnSlice, changes)
	if contender == "ours" {
		var learned, backendErrs int64
		for _, o := range ours {
			learned, backendErrs = learned+o.Learned, backendErrs+o.BackendErrors
		}
		s["learned"] = float64(learned)
		if backendErrs > 0 {
			fmt.Fprintf(os.Stderr, "%s: our side counted %d backend errors\n", name, backendErrs)
		}
	}
	if *learnSeriesTo != "" {
		if err := appendLearnSeries(*learnSeriesTo, name, rep, contender, series, ours[0].Intervals); err != nil {
			fmt.Fprintf(os.Stderr, "benchmarks: -learn-series: %v\n", err)
		}
	}
	return s
}

// learnReport reports a learn comparison's samples: ours against each
// anchor, with issue 16's targets.
func learnReport(r *reporter, procs int, family limitmock.Family, res map[string][]sample) {
	headers := family != limitmock.None
	where := "1 process"
	if procs > 1 {
		where = fmt.Sprintf("%d processes", procs)
	}
	goodput := metricSpec{key: "goodput-%", label: "goodput: 200s over what the hidden limit allowed", unit: "%", better: "higher",
		note: fmt.Sprintf("%s × %d workers, %d tenants, headers %s", where, learnWorkers, learnTenants, family)}
	refused := metricSpec{key: "429-%", label: "429s over requests", unit: "%", better: "lower"}
	if headers {
		goodput.target, refused.target = atLeast(95, "≥ 95%"), atMost(0.5, "≤ 0.5%")
	} else {
		goodput.target, refused.target = atLeast(85, "≥ 85%"), atMost(3, "≤ 3%")
	}
	specs := []metricSpec{goodput, refused}
	if !headers {
		for i, st := range learnSchedule[1:] {
			specs = append(specs, metricSpec{key: recoverKey(i), unit: "s", better: "lower", target: atMost(3, "≤ 3 s"),
				label: fmt.Sprintf("time back to ≥ 90%% of the limit after %d/s → %d/s", learnSchedule[i].Rate, st.Rate)})
		}
	}
	for _, ms := range specs {
		for _, a := range learnContenders[1:] {
			r.compare(ms, learnContenders[0].name, res["ours"], a.name, res[a.key])
		}
	}
	r.compare(metricSpec{key: "learned", label: "answers our side learned from", unit: "answers", better: "higher"},
		learnContenders[0].name, res["ours"], "", nil)
}

// redisLearns reports, as bucket.ErrNoLearning, a redisstore that keeps
// no learned limits.
func redisLearns(addr string) error {
	client := newRedisClient(addr)
	defer client.Close()
	store, err := redisstore.New(client, redisstore.Options{Prefix: prefix + "learn-probe:"})
	if err != nil {
		return err
	}
	defer store.Close()
	if _, ok := driver.Backend(store).(driver.LearnBackend); !ok {
		return fmt.Errorf("redisstore keeps no learned limits yet: %w; this comparison runs once it does", bucket.ErrNoLearning)
	}
	return nil
}

// appendLearnSeries appends a run's windows to path as CSV: the
// comparison, the repetition, the contender, the window's start in
// seconds, its 200s, its 429s and what the limit allowed, and for our side
// each tenant's learned interval in ms at the window's end, as the first
// child saw it.
func appendLearnSeries(path, name string, rep int, contender string, series []learnWindow, intervals [][]float64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if st, err := f.Stat(); err == nil && st.Size() == 0 {
		fmt.Fprint(f, "comparison,rep,contender,t,ok,429,allowed")
		for i := range learnTenants {
			fmt.Fprintf(f, ",interval_ms_%d", i)
		}
		fmt.Fprintln(f)
	}
	for w, win := range series {
		fmt.Fprintf(f, "%s,%d,%s,%.2f,%d,%d,%.2f", name, rep, contender, (time.Duration(w) * learnSlice).Seconds(), win.ok, win.refused, win.allowed)
		for i := range learnTenants {
			if w < len(intervals) {
				fmt.Fprintf(f, ",%.1f", intervals[w][i])
			} else {
				fmt.Fprint(f, ",")
			}
		}
		fmt.Fprintln(f)
	}
	return f.Close()
}
