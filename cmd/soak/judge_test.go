package main

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// series returns a sample every second from 0s to 60s, of f(t in seconds).
func series(f func(t float64) float64) []point {
	var pts []point
	for s := range 61 {
		pts = append(pts, point{time.Duration(s) * time.Second, f(float64(s))})
	}
	return pts
}

func TestJudge(t *testing.T) {
	const warmup = 12 * time.Second
	noise := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name  string
		pts   []point
		floor float64
		grew  bool
	}{
		{"flat", series(func(float64) float64 { return 100 }), 1, false},
		{"growing", series(func(t float64) float64 { return 100 + t }), 1, true},
		{"growing slowly, under 10%", series(func(t float64) float64 { return 100 + t/10 }), 1, false},
		{"noisy flat, ±20%", series(func(float64) float64 { return 100 * (0.8 + 0.4*noise.Float64()) }), 1, false},
		{"noisy growing", series(func(t float64) float64 { return 100 + 2*t + 20*noise.NormFloat64() }), 1, true},
		// A step in the warm-up is the warm-up: what comes after is flat.
		{"step at warm-up", series(func(t float64) float64 {
			if t < warmup.Seconds() {
				return 10
			}
			return 100
		}), 1, false},
		// A step after it, to a level that stays, is growth.
		{"step after warm-up", series(func(t float64) float64 {
			if t < 40 {
				return 100
			}
			return 150
		}), 1, true},
		// A sawtooth, the shape a periodic sweep gives, is flat.
		{"sawtooth", series(func(t float64) float64 { return 100 + 50*math.Mod(t, 5)/5 }), 1, false},
		{"falling", series(func(t float64) float64 { return 200 - t }), 1, false},
		// Growth under the floor is not judged growth, however many
		// percent: 4 goroutines becoming 6.
		{"under the floor", series(func(t float64) float64 { return 4 + math.Floor(t/30) }), 4, false},
		{"over the floor", series(func(t float64) float64 { return 4 + math.Floor(t/6) }), 4, true},
		{"from nothing", series(func(t float64) float64 { return max(0, t-30) * 1000 }), 1, true},
		// The last third 20% above the first, but a spike early in the
		// middle, and nothing after it: the slope over the window is
		// negative, and the means alone do not fail it.
		{"a spike, then 20% up", series(func(t float64) float64 {
			switch {
			case t < 28:
				return 100
			case t < 36:
				return 1000
			case t < 45:
				return 0
			}
			return 120
		}), 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := judge(judged(tt.pts, warmup), tt.floor)
			require.True(t, ok, "judged")
			assert.Equal(t, tt.grew, v.grew, "grew; first third %.1f, last third %.1f, slope %.3f/s", v.first, v.last, v.slope)
		})
	}
}

func TestJudgeTooFewSamples(t *testing.T) {
	pts := series(func(t float64) float64 { return max(0, t-50) * 100 })
	_, ok := judge(judged(pts, 56*time.Second), 1)
	assert.False(t, ok, "5 samples after warm-up were judged, want at least %d", minJudged)
	v, ok := judge(judged(pts, 55*time.Second), 1)
	assert.True(t, ok, "%d samples after warm-up were not judged", minJudged)
	assert.True(t, v.grew)
}

// TestJudgedSkipsTheStart: the sample taken before any load is never
// judged, even without a warm-up.
func TestJudgedSkipsTheStart(t *testing.T) {
	pts := series(func(t float64) float64 { return t })
	assert.Equal(t, time.Second, judged(pts, 0)[0].at)
	assert.Equal(t, 12*time.Second, judged(pts, 12*time.Second)[0].at)
	assert.Equal(t, 13*time.Second, judged(pts, 12*time.Second+time.Millisecond)[0].at)
	assert.Empty(t, judged(pts, time.Hour))
}

func TestJudgedSamples(t *testing.T) {
	tests := []struct {
		duration, warmup, sample time.Duration
		want                     int
	}{
		{60 * time.Second, 12 * time.Second, 1600 * time.Millisecond, 30}, // 12.8s … 59.2s
		{60 * time.Second, 12 * time.Second, 10 * time.Second, 5},         // 20s … 60s
		{30 * time.Minute, 5 * time.Minute, 10 * time.Second, 151},        // 5m … 30m
		{10 * time.Second, 0, time.Second, 10},                            // 1s … 10s
		{10 * time.Second, 9 * time.Second, 20 * time.Second, 0},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, judgedSamples(tt.duration, tt.warmup, tt.sample),
			"judgedSamples(%v, %v, %v)", tt.duration, tt.warmup, tt.sample)
	}
}
