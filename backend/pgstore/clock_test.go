package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// clockHarness admits one key's requests at times the test chooses,
// recording the admitted starts.
type clockHarness struct {
	t      *testing.T
	s      *pgstore.Store
	req    driver.Request
	starts []backendtest.Start
	last   int64 // Decision.Now of the last admission
}

// run admits n times from at, every µs apart.
func (h *clockHarness) run(step string, at int64, n int, every int64) {
	h.t.Helper()
	for i := range n {
		now := at + int64(i)*every
		d, _, err := pgstore.RawAdmit(context.Background(), h.s, h.req, &now)
		require.NoError(h.t, err, step)
		if !d.Allowed {
			continue
		}
		require.GreaterOrEqual(h.t, d.Now, h.last, "%s: admitted at a key time earlier than the previous admission", step)
		h.last = d.Now
		h.starts = append(h.starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
}

// TestClockStepBack: the server's clock steps back (a failover to a
// server whose clock is behind, a step of the host's) after an admission
// at a later time pruned quota slots that the earlier time still counts.
// The key's clock does not follow it back (each row keeps the time it
// was decided at): the admitted starts, in the key's time, conform to
// the limit, as redisstore's and sqlitestore's do. Both of the
// function's ways are checked: its loop (quotas) and its one statement
// (one admission per key without quotas).
func TestClockStepBack(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	t0 := time.Now().UnixMicro()
	// A burst of 50 at 1/s spans 49s: admissible starts reach back that far.
	lim := bucket.Every(time.Second, 1).WithBurst(50).WithQuota(50, time.Minute)
	h := &clockHarness{t: t, s: s, req: driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}}
	h.run("at t0", t0, 60, 0)               // 50 admitted: the minute's quota is full
	h.run("at t0+61s", t0+61_000_000, 1, 0) // prunes t0's slot, admits 1
	h.run("back at t0+30s", t0+30_000_000, 10, 0)
	assert.NoError(t, backendtest.Check(lim, h.starts), "starts across the clock's step, in the key's time")
	assert.GreaterOrEqual(t, len(h.starts), 51, "admitted: too few for a meaningful check")

	rate := driver.Request{Key: "rate", Limit: backendtest.Limit(bucket.PerSecond(1).WithBurst(5)), Cost: 1}
	later, back := t0+61_000_000, t0+30_000_000
	_, _, err := pgstore.RawAdmit(ctx, s, rate, &later)
	require.NoError(t, err)
	batch := []driver.Admission{{Request: rate}}
	require.NoError(t, pgstore.AdmitBatchAt(ctx, s, batch, back))
	assert.Equal(t, later*1000, batch[0].Decision.Now, "key without quotas, clock back 31s: the decision's time: want its last write's")
}

// TestClockStepBackAfterSweep: the sweep, on the server's clock, deleted a
// row that an earlier time would not have judged fresh, and then the
// server's clock stepped back behind the sweep. The key's admitted
// starts, in the key's time, must still conform to the limit, as
// sqlitestore's do. The admissions are decided at chosen times an hour
// behind the server's clock, so that the sweep (which reads the server's
// clock) is the step forward and the admissions after it the step back.
//
// It fails: a key without a row starts at the server's clock, and
// nothing records the time the sweep judged rows fresh at (sqlitestore's
// clock.swept does), so back at t0+1s the key has a fresh bucket and
// admits 10 more than the minute's quota of 50. Without the sweep the
// row's seen keeps the key's clock and the test passes.
func TestClockStepBackAfterSweep(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour).UnixMicro()
	lim := bucket.PerSecond(1000).WithBurst(50).WithQuota(50, time.Minute)
	req := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1, MaxWait: 50 * time.Millisecond}
	h := &clockHarness{t: t, s: s, req: req}
	h.run("at t0", t0, 60, 1000) // 50 admitted: the minute's quota is full
	_, err := pgstore.Sweep(ctx, s)
	require.NoError(t, err, "sweep an hour after t0")
	var rows int
	require.NoError(t, s.Pool().QueryRow(ctx, "SELECT count(*) FROM "+s.Table()).Scan(&rows))
	require.Zero(t, rows, "rows after the sweep an hour after t0")
	h.run("back at t0+1s", t0+1_000_000, 10, 1000)
	assert.NoError(t, backendtest.Check(lim, h.starts), "starts across the sweep and the clock's step back, in the key's time")
	assert.GreaterOrEqual(t, len(h.starts), 50, "admitted: too few for a meaningful check")

	// Once the server's clock has caught up, the key admits at its time.
	d, _, err := pgstore.RawAdmit(ctx, s, req, nil)
	require.NoError(t, err, "caught up")
	assert.True(t, d.Allowed, "once the server's clock caught up")
	assert.GreaterOrEqual(t, d.Now, (t0+time.Hour.Microseconds())*1000, "once the server's clock caught up, the decision's time: want the server's")
}
