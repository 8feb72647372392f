package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
)

const sqliteTime = 500 * time.Millisecond

// sqliteOpen is a limit that never binds in microsecond ticks, so that
// every admission is charged and written.
var sqliteOpen = bucket.PerSecond(1_000_000).WithBurst(1_000_000_000)

// sqliteChild serves a parent: it opens the file, says "ready", and for
// each line "MODE NS OFFSET" admits for NS nanoseconds over 1,000 keys
// starting at OFFSET, one Admit at a time (MODE admit) or as jobs through
// a Dispatcher that decides them in batches (MODE dispatch; COUNT is the
// jobs that completed, the Dispatcher being stopped if it has not drained
// within drainTime), and answers "done COUNT ELAPSED_NS MALLOCS".
func sqliteChild(path string, in io.Reader, out io.Writer) error {
	s, err := sqlitestore.Open(path, sqlitestore.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	lim, err := bucket.NewLimiter(s, sqliteOpen)
	if err != nil {
		return err
	}
	ks := keys(1000)
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	ctx := context.Background()
	for sc.Scan() {
		var (
			mode   string
			ns     int64
			offset int
		)
		if _, err := fmt.Sscan(sc.Text(), &mode, &ns, &offset); err != nil {
			return fmt.Errorf("bad command %q: %v", sc.Text(), err)
		}
		m0 := mallocs()
		t0 := time.Now()
		deadline := t0.Add(time.Duration(ns))
		n := 0
		switch mode {
		case "admit":
			req := driver.Request{Limit: backendtest.Limit(sqliteOpen), Cost: 1}
			for i := offset; time.Now().Before(deadline); i += 7 {
				req.Key = ks[i%len(ks)]
				if d, err := s.Admit(ctx, req); err != nil || !d.Allowed {
					return fmt.Errorf("Admit = %v, %v", d.Allowed, err)
				}
				n++
			}
		case "dispatch":
			d, err := dispatcher.New(func(_ context.Context, i int) (int, error) { return i, nil }, func(i int) string { return ks[i%len(ks)] },
				dispatcher.WithWorkers(8), dispatcher.WithLimiter(lim))
			if err != nil {
				return err
			}
			n = feed(d, -1, deadline, offset, 7) // only what completed counts
		default:
			return fmt.Errorf("unknown mode %q", mode)
		}
		el := time.Since(t0)
		fmt.Fprintf(out, "done %d %d %d\n", n, el.Nanoseconds(), mallocs()-m0)
	}
	return sc.Err()
}

// sqliteProcs compares, with procs processes on one SQLite file, one Admit
// at a time against jobs through a Dispatcher, whose scheduler decides
// the admissions of many keys in one transaction. No library among the
// anchors keeps limits in SQLite; the baseline is the Admit loop.
func sqliteProcs(procs int) func(r *reporter) {
	return func(r *reporter) {
		dir, err := os.MkdirTemp("", "lbbench-sqlite-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "bench.db")
		s, err := sqlitestore.Open(path, sqlitestore.Options{})
		if err != nil {
			panic(err)
		}
		s.Close()
		children := make([]*child, procs)
		for i := range children {
			c, err := startChild("-child", "sqlite", "-child-path", path)
			if err != nil {
				panic(err)
			}
			children[i] = c
			defer c.stop()
		}
		for _, c := range children {
			if l := c.line(); l != "ready" {
				panic(fmt.Sprintf("child said %q\n%s", l, c.stderr.String()))
			}
		}
		run := func(mode string) sample {
			for i, c := range children {
				c.say("%s %d %d", mode, sqliteTime.Nanoseconds(), i*131)
			}
			var rate, count, allocs float64
			for _, c := range children {
				var n, ns, m int64
				if _, err := fmt.Sscanf(c.line(), "done %d %d %d", &n, &ns, &m); err != nil {
					panic(err)
				}
				rate += float64(n) / (float64(ns) / 1e9)
				count += float64(n)
				allocs += float64(m)
			}
			return sample{"admissions/s": rate, "allocs/op": allocs / count}
		}
		res := repeat(r.reps,
			contender{"admit", func() sample { return run("admit") }},
			contender{"dispatch", func() sample { return run("dispatch") }},
		)
		name := fmt.Sprintf("Admit loop, %d process", procs)
		if procs > 1 {
			name += "es"
		}
		tp := metricSpec{key: "admissions/s", label: "admissions (one at a time)", unit: "admissions/s", better: "higher"}
		if procs == 4 {
			tp.target = atLeast(20_000, "≥ 20,000/s")
		}
		r.compare(tp, "sqlitestore Admit", res["admit"], "", nil)
		r.compare(metricSpec{key: "allocs/op", label: "allocations (one at a time)", unit: "allocs/op", better: "lower"},
			"sqlitestore Admit", res["admit"], "", nil)
		r.compare(metricSpec{key: "admissions/s", label: "jobs through a Dispatcher, batched", unit: "jobs/s", better: "higher",
			note: "the anchor is our own Admit loop: no anchor library keeps limits in SQLite"},
			"Dispatcher + sqlitestore", res["dispatch"], name, res["admit"])
	}
}
