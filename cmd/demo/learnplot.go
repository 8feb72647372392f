package main

import (
	"fmt"
	"image/color"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// A learnSeries is one tenant's part of the -learn chart.
type learnSeries struct {
	tenant  string
	learned []learnedSample // sampled, in time order
	good    []time.Duration // answers 200 (against a -target: requests sent)
}

// learnChart is what the -learn chart draws, on the run's clock (since the
// mock API started, or the tally's start against a -target).
type learnChart struct {
	series   []learnSeries   // the sampled tenants'
	rejected []time.Duration // every tenant's 429s
	hidden   []limitmock.Step
	ceiling  int
	source   string // what good counts: "answers 200" or "requests"
}

// learnChartData reads the chart's data from the tally and the mock API's
// arrivals (nil against a -target).
func learnChartData(cfg *config, t *tally, arrivals map[string][]arrival) learnChart {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := learnChart{hidden: cfg.hidden, ceiling: cfg.rate, source: "answers 200"}
	if arrivals == nil {
		c.source = "requests"
	}
	for i, name := range t.order {
		tt := t.tenants[name]
		ls := learnSeries{tenant: name, learned: sortedSamples(tt.samples)}
		if arrivals == nil {
			ls.good = slices.Clone(tt.sends)
			c.rejected = append(c.rejected, tt.rejects...)
		}
		for _, a := range arrivals[name] {
			switch a.Status {
			case http.StatusOK:
				ls.good = append(ls.good, a.At)
			case http.StatusTooManyRequests:
				c.rejected = append(c.rejected, a.At)
			}
		}
		if i < maxSampled {
			c.series = append(c.series, ls)
		}
	}
	return c
}

// writeLearnPlot draws two panels over the run: above, the rate each
// tenant's bucket applied (its learned limit) against the hidden limit and
// the ceiling; below, the rate it achieved, its answers 200 per second,
// against the hidden limit, and the 429s.
func writeLearnPlot(path string, c learnChart, s summary) error {
	var span time.Duration
	top := float64(c.ceiling)
	for _, ls := range c.series {
		if len(ls.good) > 0 {
			span = max(span, slices.Max(ls.good))
		}
		if len(ls.learned) > 0 {
			span = max(span, ls.learned[len(ls.learned)-1].at)
		}
	}
	span = max(span, time.Millisecond)
	bin := binWidth(span, float64(c.ceiling)/2)

	learned := plot.New()
	learned.Title.Text = fmt.Sprintf("Learned limit per tenant (sampled every %v): %s backend, %s, %s",
		sampleEvery, s.Backend, plural(s.Procs, "process", "processes"), headersTitle(s.Learn.Headers))
	learned.Y.Label.Text = "requests/s its bucket applies"
	achieved := plot.New()
	achieved.Title.Text = fmt.Sprintf("Achieved rate per tenant: %s per second", c.source)
	achieved.X.Label.Text = "seconds since the run's start"
	achieved.Y.Label.Text = fmt.Sprintf("%s/s (in bins of %v)", c.source, bin)

	// The limits first, so that the tenants' lines are drawn over them.
	if err := addCeiling(learned, c.ceiling, span); err != nil {
		return err
	}
	for _, p := range []*plot.Plot{learned, achieved} {
		if c.hidden != nil {
			if err := addHidden(p, c.hidden, span); err != nil {
				return err
			}
		}
	}
	for i, ls := range c.series {
		if xys := learnedSteps(ls.learned); len(xys) > 0 {
			if err := addTenantLine(learned, xys, i, ls.tenant); err != nil {
				return err
			}
		}
		if len(ls.good) > 0 {
			if err := addTenantLine(achieved, steps(ls.good, 0, span, bin), i, ls.tenant); err != nil {
				return err
			}
			top = max(top, peak(ls.good, 0, span, bin))
		}
	}
	if len(c.rejected) > 0 {
		if err := add429s(achieved, c.rejected, 0, span, bin); err != nil {
			return err
		}
	}
	for _, p := range []*plot.Plot{learned, achieved} {
		p.Legend.Top, p.Legend.Left = true, false
		p.X.Min, p.X.Max = 0, span.Seconds()
		p.Y.Min, p.Y.Max = 0, 1.35*top
	}
	return saveStacked(path, 10*vg.Inch, 8*vg.Inch, learned, achieved)
}

// learnedSteps returns samples as a step line: the mean of the samples of
// every sampleEvery (several processes sample the same tenant).
func learnedSteps(samples []learnedSample) plotter.XYs {
	var xys plotter.XYs
	for i := 0; i < len(samples); {
		bin := samples[i].at / sampleEvery
		var sum float64
		j := i
		for ; j < len(samples) && samples[j].at/sampleEvery == bin; j++ {
			sum += samples[j].rate
		}
		xys = append(xys, plotter.XY{X: (bin * sampleEvery).Seconds(), Y: sum / float64(j-i)})
		i = j
	}
	return xys
}

// addHidden draws the hidden limit as a step line up to span.
func addHidden(p *plot.Plot, schedule []limitmock.Step, span time.Duration) error {
	var xys plotter.XYs
	for _, s := range schedule {
		if s.At < span {
			xys = append(xys, plotter.XY{X: s.At.Seconds(), Y: float64(s.Rate)})
		}
	}
	xys = append(xys, plotter.XY{X: span.Seconds(), Y: xys[len(xys)-1].Y})
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.StepStyle = plotter.PostStep
	l.Color = color.Gray{Y: 64}
	l.Width = vg.Points(2.5)
	l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	p.Add(l)
	p.Legend.Add("hidden limit", l)
	return nil
}

func addCeiling(p *plot.Plot, ceiling int, span time.Duration) error {
	return addLevel(p, float64(ceiling), span, fmt.Sprintf("ceiling %d/s (-rate)", ceiling), color.Gray{Y: 150}, vg.Points(1))
}

func headersTitle(family string) string {
	if family == "" {
		return "a -target's headers"
	}
	return "-api-headers " + family
}

// saveStacked draws plots one above the other, their axes aligned, into
// path, as SVG or PNG by its extension.
func saveStacked(path string, w, h vg.Length, plots ...*plot.Plot) (err error) {
	c, err := draw.NewFormattedCanvas(w, h, strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), "."))
	if err != nil {
		return err
	}
	grid := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		grid[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadX: vg.Millimeter, PadY: 3 * vg.Millimeter,
		PadTop: vg.Millimeter, PadBottom: vg.Millimeter, PadLeft: vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align(grid, tiles, draw.New(c))
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = c.WriteTo(f)
	return err
}
