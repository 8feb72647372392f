package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/paritytest"
)

// TestParity feeds the same random sequences of admissions, refunds,
// pauses, learnings and clock steps to driver.Decide, Refund, Pause and
// Learn in Go and to the Lua script on a fake clock, and requires
// identical decisions (their intervals too), bookings, learned intervals
// and expiry times: the script is the mathematics of package bucket, in
// microseconds.
func TestParity(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	var now int64 // µs, the fake clock both sides share
	redisstore.SetClock(s, func() int64 { return now })
	ctx := context.Background()
	sequences := 200
	if testing.Short() {
		sequences = 50
	}
	paritytest.Sequences(t, paritytest.Target{
		Admit: func(req driver.Request, at int64) (driver.Decision, int64, error) {
			now = at
			return redisstore.RawAdmit(ctx, s, req)
		},
		Refund: func(req driver.Request, d driver.Decision, at int64) (int64, error) {
			now = at
			return redisstore.RawRefund(ctx, s, req, d)
		},
		Pause: func(key string, d time.Duration, at int64) (int64, error) {
			now = at
			return redisstore.RawPause(ctx, s, key, d)
		},
		Learn: func(key string, lim driver.Limit, fb driver.Feedback, at int64) (time.Duration, int64, error) {
			now = at
			return redisstore.RawLearn(ctx, s, key, lim, fb)
		},
		Forget: func(key string) { s.Client().Del(ctx, s.RedisKey(key)) },
	}, sequences, 120)
}

// TestParityBatch: one script call decides many requests, of several keys
// (each key several times) with quotas of different shapes, so requests
// of different lengths follow one another in its argument; batches pass
// one call's group of 64. Every decision matches driver.Decide run on the
// requests in batch order.
func TestParityBatch(t *testing.T) {
	s := newStore(t, newClient(t), redisstore.Options{Pipelines: -1})
	var now int64 // µs
	redisstore.SetClock(s, func() int64 { return now })
	paritytest.Batches(t, func(batch []driver.Admission, at int64) error {
		now = at
		s.AdmitBatch(context.Background(), batch)
		return nil
	})
}
