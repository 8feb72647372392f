package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/internal/limitmock"
)

func TestLimitIntegral(t *testing.T) {
	s := learnSchedule // 30/s, 10/s from 10 s, 20/s from 20 s
	tests := []struct {
		from, to time.Duration
		want     float64
	}{
		{0, 30 * time.Second, 300 + 100 + 200},
		{0, 250 * time.Millisecond, 7.5},
		{9 * time.Second, 11 * time.Second, 30 + 10},
		{25 * time.Second, 40 * time.Second, 300}, // the last step holds on
		{5 * time.Second, 5 * time.Second, 0},
	}
	for _, tt := range tests {
		assert.InDelta(t, tt.want, limitmock.Allowed(s, tt.from, tt.to), 1e-9, "limitmock.Allowed(%v, %v)", tt.from, tt.to)
	}
}

// answersAt returns a tenant's answers: ok 200s then refused 429s, spread
// evenly over [from, to).
func answersAt(from, to time.Duration, ok, refused int) []limitmock.Answer {
	n := ok + refused
	as := make([]limitmock.Answer, 0, n)
	for i := range n {
		status := 200
		if i >= ok {
			status = 429
		}
		as = append(as, limitmock.Answer{At: from + (to-from)*time.Duration(i)/time.Duration(n), Status: status})
	}
	return as
}

func TestLearnSeries(t *testing.T) {
	const s = time.Second
	answers := map[string][]limitmock.Answer{
		"a": append(answersAt(0, 10*s, 300, 0), answersAt(10*s, 20*s, 100, 50)...),
		"b": answersAt(0, 20*s, 0, 7),
	}
	answers["a"] = append(answers["a"], limitmock.Answer{At: 20 * s, Status: 200}) // at the end: left out
	ws := learnSeries(answers, learnSchedule, 2, learnSlice, 20*s)
	require.Len(t, ws, 80)
	var ok, refused int
	for _, w := range ws {
		ok, refused = ok+w.ok, refused+w.refused
	}
	assert.Equal(t, 400, ok)
	assert.Equal(t, 57, refused)
	assert.InDelta(t, 2*7.5, ws[0].allowed, 1e-9, "the first window allows 2 tenants 30/s for 250ms")
	assert.InDelta(t, 2*2.5, ws[79].allowed, 1e-9, "the last window allows 2 tenants 10/s for 250ms")

	// An end within a window: the last window is a part one.
	ws = learnSeries(nil, learnSchedule, 1, learnSlice, 1100*time.Millisecond)
	require.Len(t, ws, 5)
	assert.InDelta(t, 3, ws[4].allowed, 1e-9, "100ms at 30/s")
}

// TestLearnJudge: goodput and 429s over the whole run, and the time back
// to the new limit read from spans of a second.
func TestLearnJudge(t *testing.T) {
	// 4 tenants on learnSchedule: 30, 10, then 20 allowed a window. All
	// of it until 10 s; after the drop to 10/s, 5 200s and 5 429s a window
	// for 2 s, then all of it; after the rise to 20/s, 10 a window for
	// 4.5 s, then all of it.
	ws := make([]learnWindow, 120)
	for i := range ws {
		switch {
		case i < 40:
			ws[i] = learnWindow{ok: 30, allowed: 30}
		case i < 48:
			ws[i] = learnWindow{ok: 5, refused: 5, allowed: 10}
		case i < 80:
			ws[i] = learnWindow{ok: 10, allowed: 10}
		case i < 98:
			ws[i] = learnWindow{ok: 10, allowed: 20}
		default:
			ws[i] = learnWindow{ok: 20, allowed: 20}
		}
	}
	got := learnJudge(ws, learnSlice, []time.Duration{10 * time.Second, 20 * time.Second})
	assert.InDelta(t, 100*2180.0/2400, got["goodput-%"], 1e-9)
	assert.InDelta(t, 100*40.0/2220, got["429-%"], 1e-9)
	// The first second at ≥ 90% after the drop is [12, 13): 3 s after it;
	// after the rise, [24.5, 25.5): 5.5 s after it.
	assert.InDelta(t, 3, got[recoverKey(0)], 1e-9, "back after the drop")
	assert.InDelta(t, 5.5, got[recoverKey(1)], 1e-9, "back after the rise")

	// Never back: the phase's length.
	for i := 40; i < len(ws); i++ {
		ws[i].ok = 0
	}
	got = learnJudge(ws, learnSlice, []time.Duration{10 * time.Second, 20 * time.Second})
	assert.InDelta(t, 10, got[recoverKey(0)], 1e-9)
	assert.InDelta(t, 10, got[recoverKey(1)], 1e-9)
}
