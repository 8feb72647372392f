package main

import (
	"fmt"
	"math"
	"time"
)

// The growth judgement (docs/guarantees.md, "Soak"). Of the samples taken
// at or after the warm-up, at least minJudged, let A be the mean of the
// first third and B the mean of the last third (n/3 samples each, rounded
// down), and s the least-squares slope of the figure over the time of
// every one of them. The resource grew if
//
//	B − A > max(maxGrowth·A, floor)  and  s > 0
//
// that is, it ended more than 10% above where it started after warm-up,
// by more than a floor that keeps small counts from failing on one unit
// (a goroutine, a file), and it rose across the whole window, not only
// between the two thirds. Comparing means of thirds rather than the first
// and last samples lets noise average out; the slope keeps a figure that
// rose and fell back (a sawtooth caught at the wrong phase) from failing
// on its means alone when it does not rise overall.
const maxGrowth = 0.10

// A point is one sample of one resource.
type point struct {
	at time.Duration // since the start of the run
	v  float64
}

// A verdict is the judgement of one resource.
type verdict struct {
	n           int     // samples judged
	first, last float64 // means of the first and last thirds
	slope       float64 // least-squares, per second
	grew        bool
}

// growth returns (last − first)/first: +Inf if first is 0 and last is
// not.
func (v verdict) growth() float64 {
	if v.first == 0 {
		if v.last == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return (v.last - v.first) / v.first
}

// judge judges pts, the samples of a resource at or after the warm-up in
// time order, with the resource's floor. It returns false if there are
// fewer than minJudged.
func judge(pts []point, floor float64) (verdict, bool) {
	n := len(pts)
	if n < minJudged {
		return verdict{n: n}, false
	}
	third := n / 3
	v := verdict{n: n, first: meanOf(pts[:third]), last: meanOf(pts[n-third:]), slope: slope(pts)}
	v.grew = v.last-v.first > max(maxGrowth*v.first, floor) && v.slope > 0
	return v, true
}

func meanOf(pts []point) float64 {
	var s float64
	for _, p := range pts {
		s += p.v
	}
	return s / float64(len(pts))
}

// slope returns the least-squares slope of pts, in units per second.
func slope(pts []point) float64 {
	var mt, mv float64
	for _, p := range pts {
		mt += p.at.Seconds()
		mv += p.v
	}
	mt /= float64(len(pts))
	mv /= float64(len(pts))
	var num, den float64
	for _, p := range pts {
		dt := p.at.Seconds() - mt
		num += dt * (p.v - mv)
		den += dt * dt
	}
	if den == 0 {
		return 0
	}
	return num / den
}

// judged returns the points of samples at or after warmup, the run's
// first sample (taken before any load) excepted.
func judged(pts []point, warmup time.Duration) []point {
	for i, p := range pts {
		if p.at > 0 && p.at >= warmup {
			return pts[i:]
		}
	}
	return nil
}

// reason says in one line how r grew.
func (v verdict) reason(r resource) string {
	return fmt.Sprintf("%s grew %s after warm-up: %s → %s (means of the first and last thirds of %d samples), %s a minute",
		r.name, percent(v.growth()), r.format(v.first), r.format(v.last), v.n, r.formatSigned(v.slope*60))
}

func percent(g float64) string {
	if math.IsInf(g, 1) {
		return "from nothing"
	}
	return fmt.Sprintf("%+.1f%%", 100*g)
}

// format prints x in r's unit.
func (r resource) format(x float64) string {
	if r.bytes {
		return fmt.Sprintf("%.1f MiB", x/mib)
	}
	if x == math.Trunc(x) && math.Abs(x) < 1e15 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

func (r resource) formatSigned(x float64) string {
	s := r.format(x)
	if x >= 0 {
		s = "+" + s
	}
	return s
}
