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
	"github.com/leakybucket/leakybucket/internal/faulttest"
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
	faulttest.FailClosed(t, down(t, newStore(t, deadClient(t), redisstore.Options{})))
}

func TestFailOpen(t *testing.T) {
	faulttest.FailOpen(t, down(t, newStore(t, deadClient(t), redisstore.Options{FailurePolicy: redisstore.FailOpen, RetryInterval: -1})))
}

func TestFailLocal(t *testing.T) {
	faulttest.FailLocal(t, down(t, newStore(t, deadClient(t), redisstore.Options{FailurePolicy: redisstore.FailLocal})))
}

func down(t *testing.T, s *redisstore.Store) faulttest.Down {
	return faulttest.Down{Store: s, Unavailable: redisstore.ErrUnavailable, Cause: new(*net.OpError), IsLocal: redisstore.IsLocal}
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
