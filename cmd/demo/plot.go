package main

import (
	"fmt"
	"image/color"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// A chartSeries is one tenant's requests over time.
type chartSeries struct {
	tenant   string
	times    []time.Duration // every request: when the API received it (or, against -target, when it was sent)
	rejected []time.Duration // of those, the ones answered 429
}

// chartData reads the series from the mock's arrivals, or from the tally
// against a -target.
func chartData(t *tally, arrivals map[string][]arrival) []chartSeries {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]chartSeries, 0, len(t.order))
	for _, name := range t.order {
		cs := chartSeries{tenant: name}
		if arrivals == nil {
			cs.times, cs.rejected = slices.Clone(t.tenants[name].sends), slices.Clone(t.tenants[name].rejects)
		}
		for _, a := range arrivals[name] {
			cs.times = append(cs.times, a.At)
			if a.Status == 429 {
				cs.rejected = append(cs.rejected, a.At)
			}
		}
		out = append(out, cs)
	}
	return out
}

// writePlot draws requests per second per tenant, the limit and any 429s,
// as SVG or PNG by path's extension.
func writePlot(path string, series []chartSeries, s summary) error {
	t0, span := extent(series)
	limit := 0.0
	if len(s.Tenants) > 0 {
		limit = s.Tenants[0].Limit
	}
	bin := binWidth(span, limit)
	if limit > 0 {
		// Requests paced at the limit come at t0 + k/limit: put bin edges
		// between them, not on them, or jitter moves one across an edge.
		half := time.Duration(float64(time.Second) / limit / 2)
		t0, span = t0-half, span+half
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Requests per second per tenant: limit %s, %s backend, %s", s.Limit, s.Backend, plural(s.Procs, "process", "processes"))
	p.X.Label.Text = "seconds since the first request"
	p.Y.Label.Text = fmt.Sprintf("requests/s (in bins of %v)", bin)
	p.Legend.Top, p.Legend.Left = false, false

	var rejected []time.Duration
	for i, cs := range series {
		if err := addTenantLine(p, steps(cs.times, t0, span, bin), i, cs.tenant); err != nil {
			return err
		}
		rejected = append(rejected, cs.rejected...)
	}
	top := limit
	for _, cs := range series {
		top = max(top, peak(cs.times, t0, span, bin))
	}
	if err := addLimit(p, limit, span); err != nil {
		return err
	}
	if len(rejected) > 0 {
		if err := add429s(p, rejected, t0, span, bin); err != nil {
			return err
		}
	}
	p.Y.Min, p.Y.Max = 0, 1.5*top
	p.X.Min, p.X.Max = 0, span.Seconds()
	return p.Save(10*vg.Inch, 4.5*vg.Inch, path)
}

// extent returns the first request's time and the span to the last.
func extent(series []chartSeries) (time.Duration, time.Duration) {
	var all []time.Duration
	for _, cs := range series {
		all = append(all, cs.times...)
	}
	if len(all) == 0 {
		return 0, 0
	}
	first, last := slices.Min(all), slices.Max(all)
	return first, last - first
}

// binWidth picks bins that hold about ten requests at the limit, and at
// most 60 bins over the run.
func binWidth(span time.Duration, limit float64) time.Duration {
	widths := []time.Duration{100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
		time.Second, 5 * time.Second, 10 * time.Second, time.Minute, 10 * time.Minute, time.Hour}
	for _, w := range widths {
		if span/w <= 60 && (limit == 0 || w.Seconds()*limit >= 10) {
			return w
		}
	}
	for _, w := range widths {
		if span/w <= 60 {
			return w
		}
	}
	return widths[len(widths)-1]
}

// counts returns the requests per bin of the run, and the width of the
// last bin, which ends with the last request: a last bin of less than half
// a width is left out (a rate measured over a sliver is noise).
func counts(times []time.Duration, t0, span, bin time.Duration) ([]int, time.Duration) {
	n := max(int((span+bin-1)/bin), 1)
	last := span - time.Duration(n-1)*bin
	c := make([]int, n)
	for _, t := range times {
		c[min(int((t-t0)/bin), n-1)]++
	}
	switch {
	case n > 1 && last < bin/2:
		return c[:n-1], bin
	case last <= 0:
		return c, bin
	}
	return c, last
}

// steps returns the rate in each bin as a step line: a point at each
// bin's start and one at the last bin's end.
func steps(times []time.Duration, t0, span, bin time.Duration) plotter.XYs {
	c, last := counts(times, t0, span, bin)
	xys := make(plotter.XYs, 0, len(c)+1)
	for i, n := range c {
		w := bin
		if i == len(c)-1 {
			w = last
		}
		xys = append(xys, plotter.XY{X: (time.Duration(i) * bin).Seconds(), Y: float64(n) / w.Seconds()})
	}
	end := time.Duration(len(c)-1)*bin + last
	return append(xys, plotter.XY{X: end.Seconds(), Y: xys[len(xys)-1].Y})
}

func peak(times []time.Duration, t0, span, bin time.Duration) float64 {
	var top float64
	for _, xy := range steps(times, t0, span, bin) {
		top = max(top, xy.Y)
	}
	return top
}

// addTenantLine draws the i-th tenant's step line, in its colour and
// dashes.
func addTenantLine(p *plot.Plot, xys plotter.XYs, i int, tenant string) error {
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.StepStyle = plotter.PostStep
	l.Color, l.Dashes = plotutil.Color(i), plotutil.Dashes(i)
	p.Add(l)
	p.Legend.Add(tenant, l)
	return nil
}

func addLimit(p *plot.Plot, limit float64, span time.Duration) error {
	return addLevel(p, limit, span, fmt.Sprintf("limit %g/s", limit), color.Gray{Y: 96}, vg.Points(2))
}

// addLevel draws a dashed horizontal line at y over the run, dashes
// long with gaps of 3 points.
func addLevel(p *plot.Plot, y float64, span time.Duration, label string, c color.Color, dash vg.Length) error {
	l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: y}, {X: span.Seconds(), Y: y}})
	if err != nil {
		return err
	}
	l.Color = c
	l.Dashes = []vg.Length{dash, vg.Points(3)}
	p.Add(l)
	p.Legend.Add(label, l)
	return nil
}

func add429s(p *plot.Plot, rejected []time.Duration, t0, span, bin time.Duration) error {
	s, err := plotter.NewScatter(steps(rejected, t0, span, bin))
	if err != nil {
		return err
	}
	s.Color = color.RGBA{R: 220, A: 255}
	s.Shape = draw.CrossGlyph{}
	p.Add(s)
	p.Legend.Add("429 answers/s (all tenants)", s)
	return nil
}
