package sqlitestore_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// fakeClock is a host clock that tests set, forwards and backwards.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// clockHarness admits one key's requests on a store driven by a fake
// clock, recording the admitted starts.
type clockHarness struct {
	t      *testing.T
	clock  *fakeClock
	s      *sqlitestore.Store
	lim    bucket.Limit
	starts []backendtest.Start
	last   int64 // Decision.Now of the last admission
}

func newClockHarness(t *testing.T, lim bucket.Limit) *clockHarness {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{Now: clock.Now, SweepInterval: -1})
	return &clockHarness{t: t, clock: clock, s: s, lim: lim}
}

func (h *clockHarness) admit(step string) driver.Decision {
	h.t.Helper()
	d, err := h.s.Admit(context.Background(), driver.Request{Key: "k", Limit: backendtest.Limit(h.lim), Cost: 1, MaxWait: 50 * time.Millisecond})
	require.NoError(h.t, err, step)
	if d.Allowed {
		// What an admission wrote was decided at d.Now; no later admission
		// of the key is decided earlier. (Refusals write nothing, and may
		// be decided earlier than a refusal before them.)
		require.GreaterOrEqual(h.t, d.Now, h.last, "%s: admitted at a store time earlier than the previous admission", step)
		h.last = d.Now
		h.starts = append(h.starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
	return d
}

// run admits once every millisecond for d.
func (h *clockHarness) run(step string, d time.Duration) {
	h.t.Helper()
	for range int(d / time.Millisecond) {
		h.admit(step)
		h.clock.Add(time.Millisecond)
	}
}

func (h *clockHarness) check(atLeast int) {
	h.t.Helper()
	assert.NoError(h.t, backendtest.Check(h.lim, h.starts), "starts across clock steps, in the store's time")
	assert.GreaterOrEqual(h.t, len(h.starts), atLeast, "admitted: too few for a meaningful check")
}

// The host clock may step backwards (NTP). These tests step it back after
// the store acted on a later time, and check the admitted starts, in the
// store's time, against the limit.

// TestClockStepBackAfterPrune: an admission at a later time pruned quota
// slots that an earlier time still counts.
func TestClockStepBackAfterPrune(t *testing.T) {
	// A burst of 50 at 1/s spans 49s: admissible starts reach back that far.
	h := newClockHarness(t, bucket.Every(time.Second, 1).WithBurst(50).WithQuota(50, time.Minute))
	h.run("at t0", 50*time.Millisecond) // 50 admitted: the minute's quota is full
	h.clock.Add(61 * time.Second)
	h.run("at t0+61s", 2*time.Millisecond) // prunes t0's slot, admits 1
	h.clock.Add(-31 * time.Second)
	h.run("back at t0+30s", 10*time.Millisecond)
	h.check(51)
}

// TestClockStepBackAfterSweep: a sweep at a later time deleted a row that
// an earlier time would not have judged fresh.
func TestClockStepBackAfterSweep(t *testing.T) {
	h := newClockHarness(t, bucket.PerSecond(1000).WithBurst(50).WithQuota(50, time.Minute))
	ctx := context.Background()
	h.run("at t0", 60*time.Millisecond) // 50 admitted: the minute's quota is full
	h.clock.Add(time.Hour)
	require.NoError(t, h.s.Sweep(ctx))
	has, err := h.s.Has(ctx, "k")
	require.NoError(t, err)
	require.False(t, has, "an hour later, Has(k): want the row swept")
	h.clock.Add(-time.Hour + time.Second)
	h.run("back at t0+1s", 10*time.Millisecond)
	h.check(50)

	// Once the host clock has caught up, the key admits at the host's time.
	h.clock.Add(time.Hour)
	d := h.admit("caught up")
	assert.True(t, d.Allowed, "once the host clock caught up")
	assert.Equal(t, h.clock.Now().UnixNano(), d.Now, "once the host clock caught up, the decision's time: want the host's")
}

// TestClockSteps steps the clock back and forth amid steady admissions.
func TestClockSteps(t *testing.T) {
	h := newClockHarness(t, bucket.PerSecond(100).WithBurst(5).WithQuota(60, time.Second).WithQuota(200, time.Minute))
	h.run("before any step", 2*time.Second)
	h.clock.Add(-10 * time.Minute)
	h.run("after a step back of 10m", time.Second)
	h.clock.Add(time.Hour)
	h.run("an hour ahead", time.Second)
	h.clock.Add(-time.Hour)
	h.run("back from an hour ahead", time.Second)
	h.check(150)
}
