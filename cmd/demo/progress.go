package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// A progress display follows a tally until stopped.
type progress interface {
	// stop shows the final state and returns once the display is done.
	stop()
}

// maxBars is the most tenants that get a bar each; more share one.
const maxBars = 12

// startProgress shows the tally's progress on w: bars on a terminal,
// a line a second otherwise, nothing with -json. Under -inflight it shows
// each tenant's peak in flight as peak reports it (the mock API's; nil
// against a -target).
func startProgress(cfg *config, t *tally, peak func(tenant string) int, w io.Writer, terminal bool) progress {
	if cfg.inflight == 0 {
		peak = nil
	}
	switch {
	case cfg.json:
		return nopProgress{}
	case terminal && !cfg.verbose: // -v logs to the same terminal; bars would garble it
		return startBars(cfg, t, peak, w)
	}
	return startLines(cfg, t, peak, w)
}

// peakOf returns the largest peak in flight among tenants.
func peakOf(peak func(tenant string) int, tenants []string) int {
	most := 0
	for _, name := range tenants {
		most = max(most, peak(name))
	}
	return most
}

type nopProgress struct{}

func (nopProgress) stop() {}

// bars are mpb progress bars, one per tenant, polled from the tally.
type bars struct {
	t        *tally
	peak     func(tenant string) int // nil: no cap to show
	inflight int
	learn    learnView
	p        *mpb.Progress
	bars     []*mpb.Bar
	all      bool // one bar for every tenant
	quit     chan struct{}
	wg       sync.WaitGroup
}

// startBars draws on w, which isTerminal found to be a terminal (mpb's
// auto refresh is forced on: mpb does not draw on writers it cannot tell
// are terminals, such as a test's buffer).
func startBars(cfg *config, t *tally, peak func(tenant string) int, w io.Writer) *bars {
	b := &bars{t: t, peak: peak, inflight: cfg.inflight, learn: newLearnView(cfg, t), p: mpb.New(mpb.WithOutput(w), mpb.WithAutoRefresh(), mpb.WithWidth(40), mpb.WithRefreshRate(100*time.Millisecond)), quit: make(chan struct{})}
	names := cfg.tenantNames()
	total := int64(cfg.jobs)
	if b.all = len(names) > maxBars; b.all {
		names, total = []string{fmt.Sprintf("%d tenants", len(names))}, total*int64(len(names))
	}
	for i, name := range names {
		b.bars = append(b.bars, b.p.AddBar(total,
			mpb.PrependDecorators(
				decor.Name(name, decor.WC{C: decor.DindentRight | decor.DSyncSpace}),
				decor.CountersNoUnit("%d/%d", decor.WC{C: decor.DSyncSpace})),
			mpb.AppendDecorators(decor.Any(b.rate(i), decor.WC{C: decor.DSyncSpace}))))
	}
	b.wg.Go(b.poll)
	return b
}

// rate shows bar i's requests in the last second and its 429s; with
// -learn the rate its bucket applies and the hidden limit; under a cap its
// peak in flight.
func (b *bars) rate(i int) decor.DecorFunc {
	return func(decor.Statistics) string {
		snap := b.t.progress()
		var rate float64
		var rejected int64
		var names []string
		var mine []progressSnapshot
		for j, s := range snap {
			if b.all || i == j {
				rate += s.rate
				rejected += s.rejected
				names = append(names, s.name)
				mine = append(mine, s)
			}
		}
		text := fmt.Sprintf("%5.1f req/s", rate)
		if b.learn.on {
			text += "  " + b.learn.text(mine)
		}
		text += fmt.Sprintf("  %d × 429", rejected)
		if b.peak != nil {
			text += fmt.Sprintf("  peak %d/%d in flight", peakOf(b.peak, names), b.inflight)
		}
		return text
	}
}

func (b *bars) poll() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		b.update()
		select {
		case <-tick.C:
		case <-b.quit:
			b.update()
			return
		}
	}
}

func (b *bars) update() {
	var all int64
	for i, s := range b.t.progress() {
		if b.all {
			all += s.done
		} else if i < len(b.bars) {
			b.bars[i].SetCurrent(s.done)
		}
	}
	if b.all {
		b.bars[0].SetCurrent(all)
	}
}

func (b *bars) stop() {
	close(b.quit)
	b.wg.Wait()
	for _, bar := range b.bars {
		if !bar.Completed() {
			bar.Abort(false) // interrupted: keep the bar as it stands
		}
	}
	b.p.Wait()
}

// lines prints a progress line a second, for logs and pipes.
type lines struct {
	t        *tally
	peak     func(tenant string) int // nil: no cap to show
	inflight int
	learn    learnView
	w        io.Writer
	jobs     int
	quit     chan struct{}
	wg       sync.WaitGroup
}

func startLines(cfg *config, t *tally, peak func(tenant string) int, w io.Writer) *lines {
	l := &lines{t: t, peak: peak, inflight: cfg.inflight, learn: newLearnView(cfg, t), w: w, jobs: cfg.jobs, quit: make(chan struct{})}
	l.wg.Go(l.loop)
	return l
}

func (l *lines) loop() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			l.print()
		case <-l.quit:
			return
		}
	}
}

func (l *lines) print() {
	snap := l.t.progress()
	var b strings.Builder
	fmt.Fprintf(&b, "%5.1fs", time.Since(l.t.start).Seconds())
	var done, rejected int64
	for i, s := range snap {
		done += s.done
		rejected += s.rejected
		if i < 8 {
			fmt.Fprintf(&b, "  %s %d/%d", s.name, s.done, l.jobs)
			if l.learn.on {
				fmt.Fprintf(&b, " learned %s", learnedString(s.learned))
			}
		}
	}
	if l.learn.hidden != nil {
		fmt.Fprintf(&b, "  hidden limit %d/s", l.learn.limitNow())
	}
	if len(snap) > 8 {
		fmt.Fprintf(&b, "  … all %d/%d", done, int64(l.jobs)*int64(len(snap)))
	}
	fmt.Fprintf(&b, "  429s %d", rejected)
	if l.peak != nil {
		names := make([]string, len(snap))
		for i, s := range snap {
			names[i] = s.name
		}
		fmt.Fprintf(&b, "  peak in flight %d/%d", peakOf(l.peak, names), l.inflight)
	}
	b.WriteString("\n")
	io.WriteString(l.w, b.String())
}

func (l *lines) stop() {
	close(l.quit)
	l.wg.Wait()
}

// A learnView shows, with -learn, the rate tenants' buckets apply and the
// mock API's hidden limit now.
type learnView struct {
	on     bool
	hidden []limitmock.Step // nil against a -target
	t      *tally
}

func newLearnView(cfg *config, t *tally) learnView {
	return learnView{on: cfg.learn, hidden: cfg.hidden, t: t}
}

// limitNow returns the hidden limit now.
func (v learnView) limitNow() int { return limitAt(v.hidden, time.Since(v.t.start)) }

// text shows the learned rate of snap (their mean, if several) and the
// hidden limit.
func (v learnView) text(snap []progressSnapshot) string {
	var sum float64
	n := 0
	for _, s := range snap {
		if s.learned > 0 {
			sum += s.learned
			n++
		}
	}
	learned := 0.0
	if n > 0 {
		learned = sum / float64(n)
	}
	text := "learned " + learnedString(learned)
	if v.hidden != nil {
		text += fmt.Sprintf("  hidden %d/s", v.limitNow())
	}
	return text
}

// learnedString shows a learned rate, "-" before any is known.
func learnedString(rate float64) string {
	if rate == 0 {
		return "   -/s"
	}
	return fmt.Sprintf("%4.1f/s", rate)
}
