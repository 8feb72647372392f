package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClockStepBack: Redis's clock steps back (a failover to a master
// whose clock is behind, a step of the host's) after an admission at a
// later time pruned quota slots that the earlier time still counts. The
// key's clock does not follow it back: the admitted starts, in the key's
// time, conform to the limit, as sqlitestore's do
// (TestClockStepBackAfterPrune there). Without the clamp, 10 more units
// passed the quota.
func TestClockStepBack(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	t0 := time.Now().UnixMicro()
	now := t0
	redisstore.SetClock(s, func() int64 { return now })
	ctx := context.Background()
	// A burst of 50 at 1/s spans 49s: admissible starts reach back that far.
	lim := bucket.Every(time.Second, 1).WithBurst(50).WithQuota(50, time.Minute)
	req := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	var (
		starts []backendtest.Start
		last   int64 // Decision.Now of the last admission
	)
	run := func(step string, n int) {
		for range n {
			d, _, err := redisstore.RawAdmit(ctx, s, req)
			require.NoError(t, err, step)
			if !d.Allowed {
				continue
			}
			require.GreaterOrEqual(t, d.Now, last, "%s: admitted at a key time earlier than the previous admission", step)
			last = d.Now
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
		}
	}
	run("at t0", 60) // 50 admitted: the minute's quota is full
	now = t0 + 61_000_000
	run("at t0+61s", 1) // prunes t0's slot, admits 1
	now = t0 + 30_000_000
	run("back at t0+30s", 10)
	assert.NoError(t, backendtest.Check(lim, starts), "starts across the clock's step, in the key's time")
	assert.GreaterOrEqual(t, len(starts), 51, "admitted: too few for a meaningful check")

	// A state without quotas (stored apart) keeps its time too.
	rate := driver.Request{Key: "rate", Limit: backendtest.Limit(bucket.PerSecond(1).WithBurst(5)), Cost: 1}
	now = t0 + 61_000_000
	_, _, err := redisstore.RawAdmit(ctx, s, rate)
	require.NoError(t, err)
	now = t0 + 30_000_000
	d, _, err := redisstore.RawAdmit(ctx, s, rate)
	require.NoError(t, err)
	assert.Equal(t, (t0+61_000_000)*1000, d.Now, "key without quotas, clock back 31s: the decision's time: want its last write's")
}
