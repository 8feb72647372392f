package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

func (s *soak) writeHeader(w io.Writer) {
	cfg := s.cfg
	fmt.Fprintf(w, "soak: %s backend, %v at full speed; warm-up %v, a sample every %v (%d after warm-up)\n",
		cfg.backend, cfg.duration, cfg.warmup, cfg.sample, judgedSamples(cfg.duration, cfg.warmup, cfg.sample))
	fmt.Fprintf(w, "load: %d new keys a minute, each given jobs for %v; %d workers, queue %d; a retry-after on %.2g%% of first runs; seed %d\n",
		cfg.keysPerMinute, cfg.keyLife, cfg.workers, cfg.queue, 100*cfg.retryAfter, cfg.seed)
	var ls []string
	for _, c := range classes {
		ls = append(ls, fmt.Sprintf("%c… %v (%d in 10)", c.letter, s.limits[c.letter], c.share))
	}
	fmt.Fprintf(w, "limits: %s\n", strings.Join(ls, " · "))
	if !s.leases {
		fmt.Fprintf(w, "        without their inflight caps: the %s backend keeps no leases\n", cfg.backend)
	}
	switch cfg.backend {
	case "redis":
		fmt.Fprintf(w, "backend: %s; idle keys expire in Redis (PEXPIRE)\n", s.b.where)
	default:
		fmt.Fprintf(w, "backend: %s; idle keys swept every %v (Options.SweepInterval; the store's default is 1m)\n", s.b.where, cfg.sweep)
	}
	if settle := 2*cfg.keyLife + cfg.sweep; cfg.warmup < settle {
		fmt.Fprintf(w, "note: the warm-up is shorter than the keys take to settle (two key lives and a sweep, %v): what the backend holds may still grow after it\n", settle)
	}
	for _, n := range s.b.notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	fmt.Fprintln(w)
}

// writeSample prints a line of sm, under a line of column names before
// the first.
func (s *soak) writeSample(w io.Writer, sm sample) {
	cols := []string{"elapsed", "jobs/s", "keys", "queued"}
	vals := []string{fmt.Sprintf("%.1fs", sm.At.Seconds()), fmt.Sprintf("%.0f", sm.Jobs.PerSecond),
		fmt.Sprint(sm.Jobs.Keys), fmt.Sprint(sm.Stats.Queued)}
	for _, r := range s.resources {
		cols = append(cols, strings.TrimSuffix(r.name, "_bytes"))
		v, ok := sm.Resources[r.name]
		switch {
		case !ok:
			vals = append(vals, "?")
		case r.bytes:
			vals = append(vals, fmt.Sprintf("%.1fM", v/mib))
		default:
			vals = append(vals, r.format(v))
		}
	}
	var head, line strings.Builder
	for i, c := range cols {
		width := max(len(c), 8)
		fmt.Fprintf(&head, "%*s ", width, c)
		fmt.Fprintf(&line, "%*s ", width, vals[i])
	}
	if len(s.samples) == 1 {
		fmt.Fprintln(w, strings.TrimRight(head.String(), " "))
	}
	fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
}

func (s *soak) writeReport(w io.Writer, js []judgement, interrupted bool) {
	fs := &s.futures
	st := s.d.Stats()
	fmt.Fprintln(w)
	if interrupted {
		fmt.Fprintf(w, "interrupted after %v\n", s.ended.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "jobs: %d accepted, %d resolved: %d succeeded, %d failed, %d cancelled; %d put back after a retry-after\n",
		fs.accepted.Load(), fs.resolved(), fs.succeeded.Load(), fs.failed.Load(), fs.cancelled.Load(), st.Retried)
	born := s.keys.Load() - s.gen.window
	fmt.Fprintf(w, "keys: %d given jobs: %d alive at the start, then %d born, %.0f a minute (%d asked)\n",
		s.keys.Load(), s.gen.window, born, float64(born)/s.ended.Minutes(), s.cfg.keysPerMinute)
	fmt.Fprintf(w, "dispatcher: %d admitted, %d throttled, %d at their inflight cap, %d round trips, %d backend errors; admission wait p50 %v, p99 %v, max %v\n",
		st.Admitted, st.Throttled, st.AtCap, st.RoundTrips, st.BackendErrors,
		st.AdmissionWait.P50.Round(time.Microsecond), st.AdmissionWait.P99.Round(time.Microsecond), st.AdmissionWait.Max.Round(time.Microsecond))
	if st.LastBackendError != nil {
		fmt.Fprintf(w, "            last backend error: %s\n", oneLine(st.LastBackendError))
	}
	fmt.Fprintf(w, "shutdown: drained in %v; %d goroutines after everything was closed, %d before the run\n",
		s.drained.Round(time.Millisecond), s.after, s.before)
	fmt.Fprintf(w, "\nafter the warm-up (%v): means of the first and last thirds of the samples, and the least-squares slope\n", s.cfg.warmup)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "resource\tstart\tafter warm-up\tend\tfirst third\tlast third\tgrowth\tslope a minute\tverdict\t")
	for _, j := range js {
		after := judged(j.points, s.cfg.warmup)
		cells := []string{j.r.name, cell(j.r, j.points, 0), cell(j.r, after, 0), cell(j.r, j.points, -1)}
		switch {
		case j.ok:
			verdict := "flat"
			if j.grew {
				verdict = "GREW"
			}
			cells = append(cells, j.r.format(j.first), j.r.format(j.last), percent(j.growth()), j.r.formatSigned(j.slope*60), verdict)
		case j.r.judged:
			cells = append(cells, "", "", "", "", fmt.Sprintf("too few samples (%d)", j.n))
		default:
			cells = append(cells, "", "", "", "", "not judged")
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
}

// cell formats pts[i] (i < 0 counts from the end), or nothing.
func cell(r resource, pts []point, i int) string {
	if i < 0 {
		i += len(pts)
	}
	if i < 0 || i >= len(pts) || math.IsNaN(pts[i].v) {
		return ""
	}
	return r.format(pts[i].v)
}
