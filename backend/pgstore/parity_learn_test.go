package pgstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/paritytest"
)

// TestParityLearnBatch: one statement decides admissions of learned and
// fixed limits (with quotas or without) and learns feedback, on a few
// keys, each several times, as driver.Decide and driver.Learn do in
// batch order: the function's loop.
func TestParityLearnBatch(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	rng := rand.New(rand.NewPCG(13, 31))
	p := newLearnParity(t, s, rng, []string{"learn-batch-b", "learn-batch-a", "learn-batch-c"})
	for round := range 80 {
		calls := make([]learnCall, 1+rng.IntN(40))
		for i := range calls {
			k := p.keys[rng.IntN(len(p.keys))]
			if rng.IntN(3) == 0 {
				calls[i] = p.learn(k)
			} else {
				calls[i] = p.admit(k)
			}
		}
		p.check(fmt.Sprintf("round %d", round), calls)
		p.step()
	}
	p.exercised()
}

// TestParityLearnDistinct: batches of admissions without quotas, one per
// key, which the function decides in one statement rather than its loop,
// apply what their keys learned (in statements of feedback between them)
// as driver.Decide does.
func TestParityLearnDistinct(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	rng := rand.New(rand.NewPCG(17, 37))
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprint("learn-distinct-", i)
	}
	p := newLearnParity(t, s, rng, keys)
	for _, k := range keys {
		for i := range p.limits[k] {
			p.limits[k][i].Quotas = nil
		}
	}
	for round := range 80 {
		ks := slices.Clone(keys)
		rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
		calls := make([]learnCall, 1+rng.IntN(len(ks)))
		for i := range calls {
			calls[i] = p.admit(ks[i])
		}
		p.check(fmt.Sprintf("round %d", round), calls)
		var fb []learnCall
		for _, k := range ks[:rng.IntN(len(ks)/2)] {
			if c := p.learn(k); c.lim.IsLearned() {
				fb = append(fb, c)
			}
		}
		if len(fb) > 0 {
			p.check(fmt.Sprintf("round %d, feedback", round), fb)
		}
		p.step()
	}
	p.exercised()
}

// TestParityLearnClamped: a learned interval so slow that a charge
// reaches MaxDuration is clamped there, and the capacity with it, in the
// function's loop and in its one statement alike.
func TestParityLearnClamped(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	p := newLearnParity(t, s, rand.New(rand.NewPCG(1, 2)), []string{"clamped-loop", "clamped-fast"})
	slow := bucket.Every(driver.MaxDuration/4, 1).WithBurst(3).WithFloor(1, driver.MaxDuration)
	fb := driver.Feedback{Interval: driver.MaxDuration / 2, TTL: driver.MaxDuration}
	for _, k := range p.keys {
		p.limits[k][0] = slow
		p.check("learn "+k, []learnCall{{key: k, lim: slow, fb: &fb}})
	}
	admit := func(k string, cost int64) learnCall {
		return learnCall{key: k, lim: slow, req: driver.Request{Key: k, Limit: backendtest.Limit(slow), Cost: cost, MaxWait: driver.MaxDuration}}
	}
	for _, cost := range []int64{1, 2, 3} {
		p.check(fmt.Sprint("loop, cost ", cost), []learnCall{admit("clamped-loop", cost), admit("clamped-loop", 1)})
		p.check(fmt.Sprint("one statement, cost ", cost), []learnCall{admit("clamped-fast", cost)})
		p.now += int64(time.Hour / time.Microsecond)
	}
}

// learnParity runs statements on the Store and their requests on Go's
// States of each key, forgotten when fresh as the Store forgets them.
type learnParity struct {
	t      *testing.T
	s      *pgstore.Store
	rng    *rand.Rand
	keys   []string
	limits map[string][]bucket.Limit // the key's limit now is its first
	states map[string]*driver.State
	now    int64
	count  map[string]int
}

// A learnCall is an admission or, with fb set, feedback to learn.
type learnCall struct {
	key string
	lim bucket.Limit
	req driver.Request
	fb  *driver.Feedback
}

func newLearnParity(t *testing.T, s *pgstore.Store, rng *rand.Rand, keys []string) *learnParity {
	p := &learnParity{t: t, s: s, rng: rng, keys: keys, limits: map[string][]bucket.Limit{}, states: map[string]*driver.State{},
		now: 1_700_000_000_000_000, count: map[string]int{}}
	for _, k := range keys {
		// Two learned limits and a fixed one; a state learned under one
		// is kept, unused, under the fixed one.
		p.limits[k] = []bucket.Limit{
			paritytest.WithRandomFloor(rng, paritytest.RandomLimit(rng)),
			paritytest.WithRandomFloor(rng, paritytest.RandomLimit(rng)),
			paritytest.RandomLimit(rng),
		}
		p.states[k] = new(driver.State)
	}
	t.Cleanup(func() { t.Logf("calls: %v", p.count) })
	return p
}

func (p *learnParity) admit(key string) learnCall {
	lim := p.limits[key][0]
	req := driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1 + p.rng.Int64N(paritytest.MaxCost(lim)),
		MaxWait: paritytest.RandomWait(p.rng, lim)}
	return learnCall{key: key, lim: lim, req: req}
}

// learn returns feedback for key under its limit now, if that is
// learned, else an admission.
func (p *learnParity) learn(key string) learnCall {
	lim := p.limits[key][0]
	if !lim.IsLearned() {
		return p.admit(key)
	}
	fb := paritytest.RandomFeedback(p.rng, p.states[key].Gen)
	return learnCall{key: key, lim: lim, fb: &fb}
}

// check runs calls in one statement at p.now and on Go's States in
// order, and requires the same decisions, intervals and fresh moments.
func (p *learnParity) check(where string, calls []learnCall) {
	p.t.Helper()
	ops := make([]pgstore.RawOp, len(calls))
	for i, c := range calls {
		if c.fb != nil {
			ops[i] = pgstore.LearnOp(c.key, backendtest.Limit(c.lim), *c.fb)
		} else {
			ops[i] = pgstore.AdmitOp(c.req)
		}
	}
	got, fresh, err := pgstore.RunAt(context.Background(), p.s, ops, p.now)
	require.NoError(p.t, err, "%s: the statement", where)
	for i, c := range calls {
		st := p.states[c.key]
		if driver.FreshAt(st) <= p.now {
			*st = driver.State{}
		}
		var want driver.Decision
		if c.fb != nil {
			dl := backendtest.Limit(c.lim)
			want.Interval = driver.Learn(st, &dl, c.fb, time.Microsecond, p.now)
			p.count["learned"]++
		} else {
			want, err = driver.Decide(st, &c.req, time.Microsecond, p.now)
			require.NoError(p.t, err, "%s: Decide", where)
			p.tally(c, want)
		}
		require.Equal(p.t, want, got[i], "%s [%d] (%s, %v, %+v): Go's decision (expected), the function's (actual)", where, i, c.key, c.lim, c.fb)
		goFresh := driver.FreshAt(st)
		if goFresh <= p.now {
			goFresh = 0
		}
		require.Equal(p.t, goFresh, fresh[i], "%s [%d] (%s): fresh at, in Go (expected) and in the function (actual)", where, i, c.key)
	}
}

// tally counts what an admission exercised.
func (p *learnParity) tally(c learnCall, d driver.Decision) {
	if d.Allowed {
		p.count["allowed"]++
	} else {
		p.count["refused"]++
	}
	if c.lim.IsLearned() && d.Interval > time.Duration(c.req.Terms(time.Microsecond).Interval)*time.Microsecond {
		p.count["learned interval applied"]++
	}
	if l := p.states[c.key].Learned; !c.lim.IsLearned() && l != nil && p.now < max(l.Until, l.PaceUntil) {
		p.count["fixed limit on a learned key"]++
	}
}

// step moves the clock on and changes some keys' limits.
func (p *learnParity) step() {
	for _, k := range p.keys {
		if p.rng.IntN(8) == 0 {
			lims := p.limits[k]
			j := 1 + p.rng.IntN(len(lims)-1)
			lims[0], lims[j] = lims[j], lims[0]
		}
	}
	p.now += []int64{0, 1_000, 50_000, 400_000, 2_000_000}[p.rng.IntN(5)]
}

// exercised fails the test unless it exercised what it is for.
func (p *learnParity) exercised() {
	p.t.Helper()
	for _, what := range []string{"allowed", "refused", "learned", "learned interval applied", "fixed limit on a learned key"} {
		require.Positive(p.t, p.count[what], "%s: never exercised", what)
	}
}
