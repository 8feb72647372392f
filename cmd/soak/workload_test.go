package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGenerator drives the generator on a clock of its own: every key
// gets a job when it is born and one when it dies, never one after, and
// no more than its budget (and its last) between; keys are born at the
// rate asked.
func TestGenerator(t *testing.T) {
	cfg := &config{keysPerMinute: 60_000, keyLife: 100 * time.Millisecond, retryAfter: 0.01, seed: 7}
	lims, err := limits(cfg.keyLife, true)
	require.NoError(t, err)
	start := time.Unix(1_000_000, 0)
	g := newGenerator(cfg, start, lims)
	require.EqualValues(t, 100, g.window, "keys alive at once: 1,000 a second for 100ms")

	type seen struct {
		first, last time.Duration
		jobs        int
	}
	keys := map[string]*seen{}
	var retries, jobs int
	record := func(j job, now time.Time) {
		jobs++
		at := now.Sub(start)
		k := keys[j.key]
		if k == nil {
			k = &seen{first: at}
			keys[j.key] = k
		}
		k.last = at
		k.jobs++
		if j.retryAfter > 0 {
			retries++
		}
		assert.True(t, j.cost >= 1 && j.cost <= maxCost, "cost %d", j.cost)
	}
	now, end := start, start.Add(time.Second)
	for now.Before(end) {
		j, ok := g.next(now)
		if !ok {
			require.True(t, g.nextBirth().After(now), "no job, and the next birth is not later")
			now = g.nextBirth()
			continue
		}
		record(j, now)
		now = now.Add(2 * time.Microsecond) // 500,000 jobs a second at most
	}
	dead := int64(time.Second / g.perKey)            // keys 0 … dead-1 died in the run
	for g.lasts < dead || g.firsts < g.window+dead { // the births and deaths of the last instant
		j, ok := g.next(end)
		require.True(t, ok)
		record(j, end)
	}

	assert.EqualValues(t, g.window+dead, g.firsts, "keys born")
	assert.EqualValues(t, dead, g.lasts, "keys given their last job")
	for n := range g.firsts {
		name := keyName(n)
		k := keys[name]
		require.NotNil(t, k, "key %s got no job", name)
		born := time.Duration(n-g.window+1) * g.perKey // at or before the start for the first window
		died := born + cfg.keyLife
		assert.LessOrEqual(t, k.first, max(born, 0)+time.Millisecond, "key %s: first job", name)
		if n < dead {
			assert.GreaterOrEqual(t, k.last, died, "key %s: last job before it died", name)
			assert.Less(t, k.last, died+time.Millisecond, "key %s: last job long after it died", name)
			assert.LessOrEqual(t, k.jobs, int(g.budget[name[0]])+1, "key %s: jobs over its budget and its last", name)
		}
	}
	assert.InDelta(t, 0.01, float64(retries)/float64(jobs), 0.003, "retry-afters a job")

	again := newGenerator(cfg, start, lims)
	first := newGenerator(cfg, start, lims)
	for i := range 1000 {
		at := start.Add(time.Duration(i) * time.Microsecond)
		a, _ := again.next(at)
		b, _ := first.next(at)
		require.Equal(t, a, b, "job %d with the same seed", i)
	}
}

func TestKeyName(t *testing.T) {
	var letters string
	for n := range int64(10) {
		letters += keyName(n)[:1]
		assert.Equal(t, strconv.FormatInt(n, 10), keyName(n)[1:])
	}
	assert.Equal(t, "aaaabbccde", letters, "classes by their share of ten")
}
