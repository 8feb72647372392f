package main

import (
	"time"

	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// A learnWindow is what the mock answered every tenant in one window of
// learnSlice: its 200s, its 429s, and what the hidden limit allowed in it
// (the integral of the limit over the window, for every tenant).
type learnWindow struct {
	ok, refused int
	allowed     float64
}

// learnSeries cuts a run's answers into windows of slice from the
// server's start, up to end: answers at or after end are left out. Every
// one of tenants counts in allowed, whether it asked anything or not.
func learnSeries(answers map[string][]limitmock.Answer, schedule []limitmock.Step, tenants int, slice, end time.Duration) []learnWindow {
	n := int((end + slice - 1) / slice)
	ws := make([]learnWindow, n)
	for i := range ws {
		from := time.Duration(i) * slice
		ws[i].allowed = float64(tenants) * limitmock.Allowed(schedule, from, min(from+slice, end))
	}
	for _, as := range answers {
		for _, a := range as {
			if a.At < 0 || a.At >= end {
				continue
			}
			w := &ws[a.At/slice]
			if a.Status == 200 {
				w.ok++
			} else {
				w.refused++
			}
		}
	}
	return ws
}

// learnRecovery is the recovery criterion: a share of the new limit, kept
// up over a span of windows.
const (
	learnRecoverShare = 0.9
	learnRecoverSpan  = 4 // windows of learnSlice: one second
)

// learnJudge reads a run's windows into its figures: goodput, the 200s as
// a percentage of what the limit allowed over the whole run; 429s as a
// percentage of the requests; and for each change of the limit at
// changes (times from the start, on window edges), the seconds from the
// change to the end of the first span of learnRecoverSpan windows, all
// after it, whose 200s reach learnRecoverShare of what the limit allowed
// in the span: the time to get back to the new limit. A run that never
// gets back within the phase scores the phase's length.
func learnJudge(ws []learnWindow, slice time.Duration, changes []time.Duration) sample {
	var ok, refused int
	var allowed float64
	for _, w := range ws {
		ok, refused, allowed = ok+w.ok, refused+w.refused, allowed+w.allowed
	}
	s := sample{
		"goodput-%": 100 * float64(ok) / allowed,
		"429-%":     100 * float64(refused) / float64(max(ok+refused, 1)),
	}
	for i, c := range changes {
		first := int(c / slice)
		last := len(ws) // the phase's windows are [first, last)
		if i+1 < len(changes) {
			last = int(changes[i+1] / slice)
		}
		s[recoverKey(i)] = float64(last-first) * slice.Seconds()
		for end := first + learnRecoverSpan; end <= last; end++ {
			var got int
			var want float64
			for _, w := range ws[end-learnRecoverSpan : end] {
				got, want = got+w.ok, want+w.allowed
			}
			if float64(got) >= learnRecoverShare*want {
				s[recoverKey(i)] = float64(end-first) * slice.Seconds()
				break
			}
		}
	}
	return s
}

func recoverKey(i int) string { return "recover-" + string(rune('0'+i)) }
