package redisstore_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deadClient returns a client of a loopback port nobody listens on.
func deadClient(t *testing.T) *redis.Client {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	c := redis.NewClient(&redis.Options{Addr: addr, DialerRetries: 1, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFailClosed(t *testing.T) {
	s := newStore(t, deadClient(t), redisstore.Options{})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(10)), Cost: 1}
	for i := range 3 { // the first asks Redis, the others find it known down
		_, err := s.Admit(ctx, req)
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Admit %d without Redis", i)
		var opErr *net.OpError
		assert.ErrorAs(t, err, &opErr, "Admit %d without Redis: want ErrUnavailable wrapping the *net.OpError", i)
	}
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), redisstore.ErrUnavailable, "Pause without Redis")
	batch := []driver.Admission{{Request: req}, {Request: req}}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		assert.ErrorIs(t, a.Err, redisstore.ErrUnavailable, "AdmitBatch[%d] without Redis", i)
	}
}

func TestFailOpen(t *testing.T) {
	s := newStore(t, deadClient(t), redisstore.Options{FailurePolicy: redisstore.FailOpen, RetryInterval: -1})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	for i := range 5 {
		d, err := s.Admit(ctx, req)
		require.NoError(t, err, "Admit %d without Redis, FailOpen", i)
		require.True(t, d.Allowed, "Admit %d without Redis, FailOpen", i)
		require.Zero(t, d.Wait, "Admit %d without Redis, FailOpen: want allowed at once", i)
		assert.NoError(t, s.Refund(ctx, req, d), "Refund of an open admission")
	}
	assert.NoError(t, s.Pause(ctx, "k", time.Second), "Pause without Redis, FailOpen")
}

func TestFailLocal(t *testing.T) {
	s := newStore(t, deadClient(t), redisstore.Options{FailurePolicy: redisstore.FailLocal})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(2)), Cost: 1, MaxWait: 2 * time.Hour}
	d1, err := s.Admit(ctx, req)
	require.NoError(t, err, "Admit without Redis, FailLocal")
	require.True(t, d1.Allowed, "Admit without Redis, FailLocal")
	require.True(t, redisstore.IsLocal(d1), "Admit without Redis, FailLocal: want allowed locally")
	now := time.Now()
	assert.WithinRange(t, time.Unix(0, d1.Now), now.Add(-time.Minute), now, "local decision's Now: want Unix time like Redis's")
	s.Admit(ctx, req)
	d3, _ := s.Admit(ctx, req)
	require.True(t, d3.Allowed, "third admission of burst 2 at 1/h: want booked an hour ahead")
	require.GreaterOrEqual(t, d3.Wait, 59*time.Minute, "third admission of burst 2 at 1/h: want booked an hour ahead")
	// Refunding the latest local admission frees its slot.
	require.NoError(t, s.Refund(ctx, req, d3))
	d4, _ := s.Admit(ctx, req)
	assert.Equal(t, d3.Start(), d4.Start(), "next start after refunding the latest booking: want the refunded one's")
	// A pause holds the local bucket.
	assert.NoError(t, s.Pause(ctx, "p", time.Hour), "Pause without Redis, FailLocal")
	d, _ := s.Admit(ctx, driver.Request{Key: "p", Limit: backendtest.Limit(bucket.PerSecond(100)), Cost: 1})
	assert.False(t, d.Allowed, "local bucket admitted during a pause")
}

// serverError is an error as Redis replies it.
type serverError string

func (e serverError) Error() string { return string(e) }
func (serverError) RedisError()     {}

// TestIsUnavailable: the replies that say Redis cannot serve at all, as
// servers phrase them, count as unavailable; an error about one key or
// script does not.
func TestIsUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{serverError("ERR max number of clients reached"), true},
		{serverError("LOADING Redis is loading the dataset in memory"), true},
		{serverError("READONLY You can't write against a read only replica."), true},
		{serverError("CLUSTERDOWN The cluster is down"), true},
		{serverError("OOM command not allowed when used memory > 'maxmemory'."), true},
		{serverError("BUSY Redis is busy running a script."), true},
		{serverError("NOSCRIPT No matching script."), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{serverError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{serverError("ERR user_script:1: Script attempted to access nonexistent global variable"), false},
	} {
		assert.Equal(t, tc.want, redisstore.IsUnavailable(tc.err), "IsUnavailable(%q)", tc.err)
	}
}

// dialTimeout is a dial's timeout as package net reports it: an error
// that matches context.DeadlineExceeded.
type dialTimeout struct{}

func (dialTimeout) Error() string        { return "dial tcp: i/o timeout" }
func (dialTimeout) Timeout() bool        { return true }
func (dialTimeout) Is(target error) bool { return target == context.DeadlineExceeded }

// TestDialTimeoutIsAnOutage: a dial that times out counts Redis down for
// RetryInterval, although its error matches context.DeadlineExceeded like
// a caller's own deadline: the next call answers by the policy without
// dialing again.
func TestDialTimeoutIsAnOutage(t *testing.T) {
	var dials atomic.Int64
	c := redis.NewClient(&redis.Options{
		Addr:       "127.0.0.1:1",
		MaxRetries: -1,
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			dials.Add(1)
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: dialTimeout{}}
		},
	})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{RetryInterval: time.Minute})
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	var first int64 // go-redis may dial more than once for a command
	for i := range 2 {
		_, err := s.Admit(context.Background(), req)
		require.ErrorIs(t, err, redisstore.ErrUnavailable, "Admit %d", i)
		if i == 0 {
			first = dials.Load()
		}
	}
	require.NotZero(t, first, "dials of the first admission")
	assert.Zero(t, dials.Load()-first, "dials of the second admission, within RetryInterval of the first's failure: want it answered without asking Redis")
}
