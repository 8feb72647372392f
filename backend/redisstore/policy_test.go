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
)

// deadClient returns a client of a loopback port nobody listens on.
func deadClient(t *testing.T) *redis.Client {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
		var opErr *net.OpError
		if !errors.Is(err, redisstore.ErrUnavailable) || !errors.As(err, &opErr) {
			t.Errorf("Admit %d without Redis: %v, want ErrUnavailable wrapping the *net.OpError", i, err)
		}
	}
	if err := s.Pause(ctx, "k", time.Second); !errors.Is(err, redisstore.ErrUnavailable) {
		t.Errorf("Pause without Redis: %v, want ErrUnavailable", err)
	}
	batch := []driver.Admission{{Request: req}, {Request: req}}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		if !errors.Is(a.Err, redisstore.ErrUnavailable) {
			t.Errorf("AdmitBatch[%d] without Redis: %v, want ErrUnavailable", i, a.Err)
		}
	}
}

func TestFailOpen(t *testing.T) {
	s := newStore(t, deadClient(t), redisstore.Options{FailurePolicy: redisstore.FailOpen, RetryInterval: -1})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	for i := range 5 {
		d, err := s.Admit(ctx, req)
		if err != nil || !d.Allowed || d.Wait != 0 {
			t.Fatalf("Admit %d without Redis, FailOpen = %+v, %v; want allowed at once", i, d, err)
		}
		if err := s.Refund(ctx, req, d); err != nil {
			t.Errorf("Refund of an open admission: %v", err)
		}
	}
	if err := s.Pause(ctx, "k", time.Second); err != nil {
		t.Errorf("Pause without Redis, FailOpen: %v, want nil", err)
	}
}

func TestFailLocal(t *testing.T) {
	s := newStore(t, deadClient(t), redisstore.Options{FailurePolicy: redisstore.FailLocal})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(2)), Cost: 1, MaxWait: 2 * time.Hour}
	d1, err := s.Admit(ctx, req)
	if err != nil || !d1.Allowed || !redisstore.IsLocal(d1) {
		t.Fatalf("Admit without Redis, FailLocal = %+v, %v; want allowed locally", d1, err)
	}
	if now := time.Now().UnixNano(); d1.Now < now-int64(time.Minute) || d1.Now > now {
		t.Errorf("local decision's Now = %v, want Unix time like Redis's", time.Unix(0, d1.Now))
	}
	s.Admit(ctx, req)
	d3, _ := s.Admit(ctx, req)
	if !d3.Allowed || d3.Wait < 59*time.Minute {
		t.Fatalf("third admission of burst 2 at 1/h = %+v, want booked an hour ahead", d3)
	}
	// Refunding the latest local admission frees its slot.
	if err := s.Refund(ctx, req, d3); err != nil {
		t.Fatal(err)
	}
	if d4, _ := s.Admit(ctx, req); d4.Start() != d3.Start() {
		t.Errorf("after refunding the latest booking, next start %v later than the refunded one", time.Duration(d4.Start()-d3.Start()))
	}
	// A pause holds the local bucket.
	if err := s.Pause(ctx, "p", time.Hour); err != nil {
		t.Errorf("Pause without Redis, FailLocal: %v, want nil", err)
	}
	if d, _ := s.Admit(ctx, driver.Request{Key: "p", Limit: backendtest.Limit(bucket.PerSecond(100)), Cost: 1}); d.Allowed {
		t.Error("local bucket admitted during a pause")
	}
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
		if got := redisstore.IsUnavailable(tc.err); got != tc.want {
			t.Errorf("IsUnavailable(%q) = %v, want %v", tc.err, got, tc.want)
		}
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
		if _, err := s.Admit(context.Background(), req); !errors.Is(err, redisstore.ErrUnavailable) {
			t.Fatalf("Admit %d: %v, want ErrUnavailable", i, err)
		}
		if i == 0 {
			first = dials.Load()
		}
	}
	if first == 0 {
		t.Fatal("the first admission never dialed")
	}
	if n := dials.Load() - first; n != 0 {
		t.Errorf("the second admission dialed %d times, within RetryInterval of the first's failure; want it answered without asking Redis", n)
	}
}
