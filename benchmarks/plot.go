package main

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// plotResults writes two charts: at path, how many times better or worse
// ours is than each anchor on every speed and memory figure (log scale);
// beside it, with "-pacing" before the extension, the pacing figures of
// every contender against the ideal.
func plotResults(path string, ms []Measurement) error {
	if err := plotRatios(path, ms); err != nil {
		return err
	}
	ext := filepath.Ext(path)
	return plotPacing(strings.TrimSuffix(path, ext)+"-pacing"+ext, ms)
}

// advantage is the factor by which ours is better (>1) or worse (<1),
// with its range over the repetitions' extremes.
func advantage(m Measurement) (adv, lo, hi float64, ok bool) {
	if m.Anchor == nil || *m.Anchor <= 0 || m.Ours <= 0 {
		return 0, 0, 0, false
	}
	o, a := m.Spread.Ours, *m.Spread.Anchor
	if m.Better == "higher" {
		adv, lo, hi = m.Ours / *m.Anchor, o[0]/a[1], o[1]/a[0]
	} else {
		adv, lo, hi = *m.Anchor/m.Ours, a[0]/o[1], a[1]/o[0]
	}
	// A repetition that measured 0 has no place on a log scale: the
	// whisker stops at 1/1000 of the median, as do infinite ones above.
	if !(lo > adv/1000) {
		lo = adv / 1000
	}
	if !(hi < adv*1000) {
		hi = adv * 1000
	}
	return adv, lo, hi, true
}

// ratioRow is a bar of the ratio chart.
type ratioRow struct {
	label       string
	adv, lo, hi float64
}

type ratioBars []ratioRow

func (r ratioBars) Len() int                    { return len(r) }
func (r ratioBars) XY(i int) (float64, float64) { return math.Log2(r[i].adv), float64(i) }
func (r ratioBars) XError(i int) (float64, float64) {
	x := math.Log2(r[i].adv)
	return x - math.Log2(r[i].lo), math.Log2(r[i].hi) - x
}

func plotRatios(path string, ms []Measurement) error {
	var rows ratioBars
	seen := map[string]bool{}
	for _, m := range ms {
		if strings.HasPrefix(m.Name, "pacing/") {
			continue // in the pacing chart, as absolute figures
		}
		adv, lo, hi, ok := advantage(m)
		if !ok {
			continue
		}
		label := fmt.Sprintf("%s: %s vs %s", m.Name, m.Metric, shortName(m.AnchorName))
		if seen[label] {
			label = fmt.Sprintf("%s: %s (%s) vs %s", m.Name, m.Metric, m.OursName, shortName(m.AnchorName))
		}
		seen[label] = true
		rows = append(rows, ratioRow{label, adv, min(lo, adv), max(hi, adv)})
	}
	if len(rows) == 0 {
		return nil
	}
	// Top to bottom in run order: the nominal axis counts from the bottom.
	for i, j := 0, len(rows)-1; i < j; i, j = i+1, j-1 {
		rows[i], rows[j] = rows[j], rows[i]
	}
	p := plot.New()
	p.Title.Text = "leakybucket vs anchors: times better (right) or worse (left), log scale"
	p.X.Label.Text = "ours ÷ anchor, in the better direction (median of repetitions; whiskers: range)"
	win, lose := make(plotter.Values, len(rows)), make(plotter.Values, len(rows))
	labels := make([]string, len(rows))
	for i, r := range rows {
		labels[i] = r.label
		if v := math.Log2(r.adv); v >= 0 {
			win[i] = v
		} else {
			lose[i] = v
		}
	}
	for _, bars := range []struct {
		v plotter.Values
		c color.Color
	}{{win, color.RGBA{46, 139, 87, 255}}, {lose, color.RGBA{205, 92, 92, 255}}} {
		bc, err := plotter.NewBarChart(bars.v, vg.Points(9))
		if err != nil {
			return err
		}
		bc.Horizontal = true
		bc.Color = bars.c
		bc.LineStyle.Width = 0
		p.Add(bc)
	}
	eb, err := plotter.NewXErrorBars(rows)
	if err != nil {
		return err
	}
	eb.LineStyle.Width = vg.Points(0.7)
	p.Add(eb)
	p.NominalY(labels...)
	p.Add(plotter.NewGrid())
	lo, hi := -2.0, 2.0
	for _, r := range rows {
		lo = math.Min(lo, math.Floor(math.Log2(r.lo)))
		hi = math.Max(hi, math.Ceil(math.Log2(r.hi)))
	}
	p.X.Min, p.X.Max = lo, hi
	p.X.Tick.Marker = log2Ticks{}
	p.Y.Tick.Label.Font.Size = vg.Points(8)
	return p.Save(12*vg.Inch, vg.Length(len(rows))*0.2*vg.Inch+1.5*vg.Inch, path)
}

// log2Ticks labels a log2 axis with factors: ¼×, ½×, 1×, 2×, 4×...
type log2Ticks struct{}

func (log2Ticks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Ceil(min); e <= max; e++ {
		label := fmt.Sprintf("%g×", math.Exp2(e))
		if e < 0 {
			label = fmt.Sprintf("1/%g×", math.Exp2(-e))
		}
		ts = append(ts, plot.Tick{Value: e, Label: label})
	}
	return ts
}

func shortName(s string) string {
	for _, cut := range []string{" in the task", " + map of rate.Limiter"} {
		if t, ok := strings.CutSuffix(s, cut); ok {
			s = t + " (+ limiter)"
		}
	}
	return s
}

// plotPacing draws, for each pacing figure, every contender's median
// beside the ideal.
func plotPacing(path string, ms []Measurement) error {
	type group struct {
		label string
		ideal float64
		vals  map[string]float64
	}
	var groups []*group
	find := func(label string, ideal float64) *group {
		for _, g := range groups {
			if g.label == label {
				return g
			}
		}
		g := &group{label: label, ideal: ideal, vals: map[string]float64{}}
		groups = append(groups, g)
		return g
	}
	contenders := []string{}
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			contenders = append(contenders, name)
		}
	}
	for _, m := range ms {
		if !strings.HasPrefix(m.Name, "pacing/") || m.Unit != "starts" || m.Anchor == nil {
			continue
		}
		ideal := 1.0
		if strings.Contains(m.Metric, "10 ms") {
			ideal = 10
			if strings.Contains(m.Name, "10000") {
				continue // a different scale
			}
		}
		g := find(strings.TrimPrefix(m.Name, "pacing/")+"\n"+m.Metric, ideal)
		ours := "ours: " + m.OursName
		add(ours)
		add(m.AnchorName)
		g.vals[ours] = m.Ours
		g.vals[m.AnchorName] = *m.Anchor
	}
	if len(groups) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = "Pacing at 1,000/s, burst 1: what the limited service sees (lower is better; dashes: ideal)"
	p.Y.Label.Text = "starts"
	colors := []color.Color{
		color.RGBA{46, 139, 87, 255}, color.RGBA{70, 130, 180, 255}, color.RGBA{218, 165, 32, 255},
		color.RGBA{205, 92, 92, 255}, color.RGBA{106, 90, 205, 255}, color.RGBA{120, 120, 120, 255},
	}
	w := vg.Points(14)
	n := len(contenders)
	for i, c := range contenders {
		vs := make(plotter.Values, len(groups))
		for j, g := range groups {
			vs[j] = g.vals[c] // 0 where the contender was not in the group
		}
		bc, err := plotter.NewBarChart(vs, w)
		if err != nil {
			return err
		}
		bc.Color = colors[i%len(colors)]
		bc.LineStyle.Width = 0
		bc.Offset = w * vg.Length(float64(i)-float64(n-1)/2)
		p.Add(bc)
		p.Legend.Add(c, bc)
	}
	ideal := make(plotter.XYs, 0, 2*len(groups))
	for j, g := range groups {
		half := float64(n) * 0.5 * 14 / 100 // about the group's width in axis units
		ideal = append(ideal, plotter.XY{X: float64(j) - half, Y: g.ideal}, plotter.XY{X: float64(j) + half, Y: g.ideal})
	}
	for j := range groups {
		l, err := plotter.NewLine(ideal[2*j : 2*j+2])
		if err != nil {
			return err
		}
		l.LineStyle.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		l.LineStyle.Width = vg.Points(1.2)
		p.Add(l)
	}
	labels := make([]string, len(groups))
	for j, g := range groups {
		labels[j] = g.label
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Font.Size = vg.Points(7)
	top := 0.0
	for _, g := range groups {
		for _, v := range g.vals {
			top = math.Max(top, v)
		}
	}
	p.Y.Min, p.Y.Max = 0, math.Max(14, top*1.4) // room for the legend
	p.Y.Tick.Marker = intTicks{}
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(10)
	p.Add(plotter.NewGrid())
	return p.Save(12*vg.Inch, 6*vg.Inch, path)
}

// intTicks labels a count axis at round integers.
type intTicks struct{}

func (intTicks) Ticks(min, max float64) []plot.Tick {
	step := 1.0
	for (max-min)/step > 12 {
		switch {
		case step == 1:
			step = 2
		case step == 2:
			step = 5
		default:
			step *= 2
		}
	}
	var ts []plot.Tick
	for v := math.Ceil(min/step) * step; v <= max; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprint(v)})
	}
	return ts
}
