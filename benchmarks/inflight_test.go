package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPeakInflight(t *testing.T) {
	tests := []struct {
		name string
		ivs  []interval
		want int
	}{
		{"none", nil, 0},
		{"one", []interval{{0, 10}}, 1},
		{"back to back: an end and a start at one instant do not overlap", []interval{{0, 10}, {10, 20}, {20, 30}}, 1},
		{"nested", []interval{{0, 100}, {10, 20}, {15, 30}}, 3},
		{"two waves of two", []interval{{0, 50}, {1, 51}, {50, 100}, {51, 101}}, 2},
		{"unsorted", []interval{{51, 101}, {0, 50}, {50, 100}, {1, 51}, {25, 26}}, 3},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, peakInflight(tt.ivs), "%s: peakInflight(%v)", tt.name, tt.ivs)
	}
}

// TestInflightSample: a call counts by its share inside the window, so
// that the cap's places busy all the window read as the ideal, wherever
// the window's edges cut the calls.
func TestInflightSample(t *testing.T) {
	const ms = int64(1e6)
	handler := inflightHandler.Nanoseconds()
	var ivs []interval // inflightCap places, each busy back to back from 3ms on
	for range inflightCap {
		for s := 3 * ms; s < 3*ms+40*handler; s += handler {
			ivs = append(ivs, interval{s, s + handler})
		}
	}
	from, to := 30*ms, 30*ms+int64(1e9) // a second, cutting calls at both ends
	s := inflightSample(ivs, from, to)
	assert.InDelta(t, inflightIdeal, s["jobs/s"], 1e-6, "jobs/s with every place busy")
	assert.InDelta(t, 100, s["%"], 1e-6, "percentage of the ideal with every place busy")
	assert.InDelta(t, 100, s["busy-%"], 1e-6, "places busy, with every place busy")
	assert.Equal(t, float64(inflightCap), s["peak"], "peak")

	// A place idle 10ms between calls loses a sixth of its work.
	var gappy []interval
	for s := int64(0); s < 2e9; s += handler + 10*ms {
		gappy = append(gappy, interval{s, s + handler})
	}
	got := inflightSample(gappy, 0, 6*(handler+10*ms))
	assert.InDelta(t, 100.0/inflightCap*5/6, got["%"], 1e-6, "one place idle 10ms between 50ms calls")
	assert.InDelta(t, 100.0/inflightCap*5/6, got["busy-%"], 1e-6, "places busy, one place idle 10ms between 50ms calls")

	// Every place busy with calls 10% late: the ideal's 1/1.1, all busy.
	var late []interval
	for range inflightCap {
		for s := int64(0); s < 2e9; s += handler * 11 / 10 {
			late = append(late, interval{s, s + handler*11/10})
		}
	}
	got = inflightSample(late, 0, 1e9)
	assert.InDelta(t, 100/1.1, got["%"], 1e-6, "percentage of the ideal with 55ms calls")
	assert.InDelta(t, 100, got["busy-%"], 1e-6, "places busy with 55ms calls")
	assert.Zero(t, inflightSample([]interval{{5, 5}}, 0, 10)["jobs/s"], "a call of no length counts nothing")
}
