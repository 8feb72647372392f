package main

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

var (
	lineColor  = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	flatColor  = color.RGBA{G: 150, B: 60, A: 255}
	grewColor  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	warmColor  = color.Gray{Y: 128}
	panelWidth = 5 * vg.Inch
	panelTall  = 2.4 * vg.Inch
)

// writePlot draws a panel per resource, and one of the jobs finished a
// second: the samples, the warm-up, and the means of the first and last
// thirds after it that the judgement compares. SVG or PNG by path's
// extension.
func writePlot(path string, s *soak, js []judgement) error {
	unit, per := "s", time.Second
	if s.cfg.duration > 5*time.Minute {
		unit, per = "min", time.Minute
	}
	x := func(d time.Duration) float64 { return float64(d) / float64(per) }

	var panels []*plot.Plot
	throughput := judgement{r: resource{name: "jobs_per_s"}}
	for _, k := range s.samples[1:] { // the first, before any load, has no rate
		throughput.points = append(throughput.points, point{k.at, k.perS})
	}
	for _, j := range append([]judgement{throughput}, js...) {
		p, err := panel(j, s.cfg.warmup, x, unit)
		if err != nil {
			return err
		}
		p.X.Min, p.X.Max = 0, x(s.ended)
		panels = append(panels, p)
	}
	const cols = 2
	rows := (len(panels) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
		for c := range cols {
			if k := i*cols + c; k < len(panels) {
				grid[i][c] = panels[k]
			}
		}
	}
	titleTall := 0.4 * vg.Inch
	w, h := cols*panelWidth, vg.Length(rows)*panelTall+titleTall
	var canvas interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".png":
		canvas = vgimg.PngCanvas{Canvas: vgimg.New(w, h)}
	default:
		canvas = vgsvg.New(w, h)
	}
	dc := draw.New(canvas)
	title := fmt.Sprintf("leakybucket soak: %s backend, %v, %d new keys a minute (%s)", s.cfg.backend, s.cfg.duration, s.cfg.keysPerMinute, verdictLine(js))
	dc.FillText(draw.TextStyle{Color: color.Black, Font: font.From(plot.DefaultFont, 13), Handler: plot.DefaultTextHandler, XAlign: draw.XCenter},
		vg.Point{X: w / 2, Y: h - titleTall/2}, title)
	body := draw.Crop(dc, 0, 0, 0, -titleTall)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Inch / 4, PadY: vg.Inch / 6, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8, PadBottom: vg.Inch / 8}
	for i, row := range plot.Align(grid, tiles, body) {
		for c, cv := range row {
			if grid[i][c] != nil {
				grid[i][c].Draw(cv)
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := canvas.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// panel draws one resource's samples.
func panel(j judgement, warmup time.Duration, x func(time.Duration) float64, unit string) (*plot.Plot, error) {
	scale, name := 1.0, j.r.name
	if j.r.bytes {
		scale, name = 1.0/mib, strings.TrimSuffix(name, "_bytes")+" (MiB)"
	}
	p := plot.New()
	p.Title.Text = name
	switch {
	case j.ok && j.grew:
		p.Title.Text += fmt.Sprintf(": %s, GREW", percent(j.growth()))
	case j.ok:
		p.Title.Text += fmt.Sprintf(": %s, flat", percent(j.growth()))
	case !j.r.judged:
		p.Title.Text += " (not judged)"
	}
	p.X.Label.Text = unit
	p.X.Tick.Marker, p.Y.Tick.Marker = plainTicks{}, plainTicks{}
	p.Y.Min = 0
	xys := make(plotter.XYs, 0, len(j.points))
	top := 0.0
	for _, pt := range j.points {
		xys = append(xys, plotter.XY{X: x(pt.at), Y: pt.v * scale})
		top = max(top, pt.v*scale)
	}
	if len(xys) > 0 {
		l, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		l.Color = lineColor
		p.Add(l)
	}
	p.Y.Max = max(top*1.15, 1)
	if warmup > 0 {
		l, err := plotter.NewLine(plotter.XYs{{X: x(warmup), Y: 0}, {X: x(warmup), Y: p.Y.Max}})
		if err != nil {
			return nil, err
		}
		l.Color, l.Dashes = warmColor, []vg.Length{vg.Points(3), vg.Points(3)}
		p.Add(l)
	}
	if j.ok {
		after := judged(j.points, warmup)
		third := len(after) / 3
		c := flatColor
		if j.grew {
			c = grewColor
		}
		for _, seg := range []struct {
			from, to point
			v        float64
		}{{after[0], after[third-1], j.first}, {after[len(after)-third], after[len(after)-1], j.last}} {
			l, err := plotter.NewLine(plotter.XYs{{X: x(seg.from.at), Y: seg.v * scale}, {X: x(seg.to.at), Y: seg.v * scale}})
			if err != nil {
				return nil, err
			}
			l.Color, l.Width = c, vg.Points(2.5)
			p.Add(l)
		}
	}
	return p, nil
}

// verdictLine sums up the judgements for the chart's title.
func verdictLine(js []judgement) string {
	var grew []string
	for _, j := range js {
		if j.ok && j.grew {
			grew = append(grew, j.r.name)
		}
	}
	if len(grew) > 0 {
		return "grew: " + strings.Join(grew, ", ")
	}
	return "nothing grew after warm-up"
}

// plainTicks are gonum's default ticks, labelled without trailing zeros
// (25000, not 25000.00).
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'g', 6, 64)
		}
	}
	return ts
}
