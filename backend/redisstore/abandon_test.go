package redisstore_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// slowProxy forwards to upstream; every chunk from upstream reaches the
// client delay after it arrived (in order).
func slowProxy(t *testing.T, upstream string, delay time.Duration) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(3)
			go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
			type chunk struct {
				at time.Time
				b  []byte
			}
			ch := make(chan chunk, 1024)
			go func() {
				defer wg.Done()
				defer close(ch)
				for {
					buf := make([]byte, 64<<10)
					n, err := u.Read(buf)
					if n > 0 {
						ch <- chunk{time.Now(), buf[:n]}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				for k := range ch {
					time.Sleep(time.Until(k.at.Add(delay)))
					if _, err := c.Write(k.b); err != nil {
						return
					}
				}
				c.Close()
			}()
		}
	}()
	return l.Addr().String()
}

// TestAbandonedAdmissionGivenBack: a caller whose context ends while its
// admission is on its way gets the context's error, whether it sent the
// admission with Admit (with Pipelines -1 or not) or AdmitBatch, and with
// a client that applies contexts to its sockets or not; what Redis
// admitted for it is given back, so the limit's one unit an hour is still
// there for the next caller, and the Store does not take the caller's
// deadline for an outage of Redis.
func TestAbandonedAdmissionGivenBack(t *testing.T) {
	addr := slowProxy(t, redistest.Addr(t), 300*time.Millisecond)
	req := bucket.Request{Key: "k", Limit: bucket.PerHour(1), Cost: 1}
	admitBatch := func(s *redisstore.Store, ctx context.Context) (bucket.Decision, error) {
		batch := []bucket.Admission{{Request: req}}
		s.AdmitBatch(ctx, batch)
		return batch[0].Decision, batch[0].Err
	}
	for _, call := range []struct {
		name      string
		pipelines int
		admit     func(s *redisstore.Store, ctx context.Context) (bucket.Decision, error)
	}{
		{"Admit", 0, func(s *redisstore.Store, ctx context.Context) (bucket.Decision, error) { return s.Admit(ctx, req) }},
		{"Admit, Pipelines -1", -1, func(s *redisstore.Store, ctx context.Context) (bucket.Decision, error) { return s.Admit(ctx, req) }},
		{"AdmitBatch", 0, admitBatch},
	} {
		for _, ctxTimeouts := range []bool{false, true} {
			c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 5 * time.Second, ContextTimeoutEnabled: ctxTimeouts})
			t.Cleanup(func() { c.Close() })
			s := newStore(t, c, redisstore.Options{Pipelines: call.pipelines, RetryInterval: time.Minute})
			if err := c.Ping(context.Background()).Err(); err != nil { // a connection ready
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			d, err := call.admit(s, ctx)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s, context timeouts %v: %+v, %v; want context.DeadlineExceeded", call.name, ctxTimeouts, d, err)
			}
			// The give-back arrives once Redis's answer has: wait for it.
			// Had the Store counted Redis down, it would answer
			// ErrUnavailable for a minute without asking.
			deadline := time.Now().Add(10 * time.Second)
			for {
				d, err = s.Admit(context.Background(), req)
				if err != nil || d.Allowed || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil || !d.Allowed {
				t.Errorf("%s, context timeouts %v: the next admission = %+v, %v; want it allowed (the abandoned one given back)", call.name, ctxTimeouts, d, err)
			}
		}
	}
}

// TestCloseWaitsForCalls: Close returns once the calls in flight have
// their answers from Redis, so that the client can be closed right after
// it (closing it under a call in flight fails the call).
func TestCloseWaitsForCalls(t *testing.T) {
	addr := slowProxy(t, redistest.Addr(t), 300*time.Millisecond)
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{})
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	batch := []bucket.Admission{{Request: bucket.Request{Key: "batch", Limit: bucket.PerHour(1), Cost: 1}}}
	var (
		wg       sync.WaitGroup
		pauseErr error
	)
	wg.Go(func() { s.AdmitBatch(context.Background(), batch) })
	wg.Go(func() { pauseErr = s.Pause(context.Background(), "paused", time.Hour) })
	time.Sleep(100 * time.Millisecond) // both are in flight
	s.Close()
	c.Close()
	wg.Wait()
	if a := batch[0]; a.Err != nil || !a.Decision.Allowed {
		t.Errorf("AdmitBatch in flight at Close: %+v, %v; want allowed", a.Decision, a.Err)
	}
	if pauseErr != nil {
		t.Errorf("Pause in flight at Close: %v", pauseErr)
	}
	if _, err := s.Admit(context.Background(), batch[0].Request); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Admit after Close: %v, want ErrClosed", err)
	}
}
