package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestAbandoned: a caller whose ctx ends while its admission is in a
// pipeline in flight returns ctx's error at once, and what Redis admitted
// for it is refunded when the answer comes; one whose ctx ends while it
// waits to be sent is never sent.
func TestAbandoned(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MinIdleConns: 4, ReadTimeout: 2 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{Pipelines: 1, RetryInterval: -1})
	ctx := context.Background()
	lim := bucket.PerHour(1)
	require.NoError(t, c.Ping(ctx).Err())
	for c.PoolStats().IdleConns < 4 {
		time.Sleep(time.Millisecond) // the pool dials its idle connections in the background
	}

	require.NoError(t, srv.Freeze())
	type result struct {
		d   driver.Decision
		err error
	}
	admit := func(key string, timeout time.Duration) chan result {
		ch := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			d, err := s.Admit(ctx, driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1})
			ch <- result{d, err}
		}()
		return ch
	}
	// "first" takes the one round trip and hangs with Redis until the read
	// times out; "kept" and "abandoned" wait behind it, then go out
	// together; "abandoned" gives up while its pipeline is in flight, and
	// "early" while it still waits to be sent.
	first := admit("first", 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	kept := admit("kept", 10*time.Second)
	abandoned := admit("abandoned", 2500*time.Millisecond)
	early := admit("early", 500*time.Millisecond)

	r := <-early
	assert.ErrorIs(t, r.err, context.DeadlineExceeded, "caller waiting to be sent, ctx ended: %+v", r.d)
	r = <-first
	assert.ErrorIs(t, r.err, redisstore.ErrUnavailable, "caller whose read timed out: %+v", r.d)
	t0 := time.Now()
	r = <-abandoned
	assert.ErrorIs(t, r.err, context.DeadlineExceeded, "caller in flight, ctx ended: %+v", r.d)
	assert.LessOrEqual(t, time.Since(t0), 1500*time.Millisecond, "caller in flight returned this long after its ctx ended, want at once")
	require.NoError(t, srv.Thaw())
	r = <-kept
	require.NoError(t, r.err, "caller in the same pipeline")
	require.True(t, r.d.Allowed, "caller in the same pipeline: %+v", r.d)
	d, err := s.Admit(ctx, driver.Request{Key: "kept", Limit: backendtest.Limit(lim), Cost: 1})
	if assert.NoError(t, err, "second admission of \"kept\"") {
		assert.False(t, d.Allowed, "second admission of \"kept\" = %+v, want refused", d)
	}
	// The refund follows the answer; give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := s.Admit(ctx, driver.Request{Key: "abandoned", Limit: backendtest.Limit(lim), Cost: 1})
		require.NoError(t, err)
		if d.Allowed {
			break
		}
		require.False(t, time.Now().After(deadline), "the abandoned admission was never refunded")
		time.Sleep(10 * time.Millisecond)
	}
	assert.Zero(t, c.Exists(ctx, s.RedisKey("early")).Val(), "the admission abandoned before it was sent reached Redis")
}

// TestOwnRoundTrip: a caller whose ctx cannot end sends its round trip
// itself; the callers that queued meanwhile, whatever their ctx, are sent
// when it ends (a batcher that left them to the next caller would hang
// them here).
func TestOwnRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MinIdleConns: 2, ReadTimeout: 10 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{Pipelines: 1, RetryInterval: -1})
	lim := bucket.PerHour(1)
	require.NoError(t, c.Ping(context.Background()).Err())

	require.NoError(t, srv.Freeze())
	admit := func(ctx context.Context, key string) chan error {
		ch := make(chan error, 1)
		go func() {
			d, err := s.Admit(ctx, driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1})
			if err == nil && !d.Allowed {
				err = errors.New("refused")
			}
			ch <- err
		}()
		return ch
	}
	own := admit(context.Background(), "own")
	time.Sleep(100 * time.Millisecond) // "own" is in flight, Redis stopped
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	queued := []chan error{admit(context.Background(), "queued-1"), admit(ctx, "queued-2")}
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, srv.Thaw())
	for i, ch := range append(queued, own) {
		select {
		case err := <-ch:
			assert.NoError(t, err, "caller %d: want allowed", i)
		case <-time.After(5 * time.Second):
			require.Failf(t, "caller never answered", "caller %d was never answered", i)
		}
	}
}
