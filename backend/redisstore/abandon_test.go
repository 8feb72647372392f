package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"

	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowProxy forwards to upstream; every chunk from upstream reaches the
// client delay after it arrived (in order).
func slowProxy(t *testing.T, upstream string, delay time.Duration) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
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
// admissions are on their way gets the context's error, whether it sent
// one with Admit (with Pipelines -1 or not) or several with AdmitBatch,
// and with a client that applies contexts to its sockets or not; what
// Redis admitted for it is given back, several admissions of one key
// included, quota units too, so that the limit's units are all there for
// the next caller; and the Store does not take the caller's deadline for
// an outage of Redis.
func TestAbandonedAdmissionGivenBack(t *testing.T) {
	addr := slowProxy(t, redistest.Addr(t), 300*time.Millisecond)
	admit := func(s *redisstore.Store, ctx context.Context, req driver.Request, _ int) error {
		_, err := s.Admit(ctx, req)
		return err
	}
	admitBatch := func(s *redisstore.Store, ctx context.Context, req driver.Request, n int) error {
		batch := make([]driver.Admission, n)
		for i := range batch {
			batch[i].Request = req
		}
		s.AdmitBatch(ctx, batch)
		for _, a := range batch {
			if !errors.Is(a.Err, context.DeadlineExceeded) {
				return fmt.Errorf("%+v, %w", a.Decision, a.Err)
			}
		}
		return batch[0].Err
	}
	for _, call := range []struct {
		name      string
		pipelines int
		lim       bucket.Limit
		n         int // admissions sent, the limit's whole burst
		admit     func(s *redisstore.Store, ctx context.Context, req driver.Request, n int) error
	}{
		{"Admit", 0, bucket.PerHour(1), 1, admit},
		{"Admit, Pipelines -1", -1, bucket.PerHour(1), 1, admit},
		{"AdmitBatch", 0, bucket.PerHour(1), 1, admitBatch},
		{"AdmitBatch, three of one key", 0, bucket.PerHour(1).WithBurst(3), 3, admitBatch},
		{"AdmitBatch, three of one key under a quota", 0, bucket.PerHour(1).WithBurst(3).WithQuota(3, time.Hour), 3, admitBatch},
	} {
		for _, ctxTimeouts := range []bool{false, true} {
			c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 5 * time.Second, ContextTimeoutEnabled: ctxTimeouts})
			t.Cleanup(func() { c.Close() })
			s := newStore(t, c, redisstore.Options{Pipelines: call.pipelines, RetryInterval: time.Minute})
			require.NoError(t, c.Ping(context.Background()).Err()) // a connection ready
			req := driver.Request{Key: "k", Limit: backendtest.Limit(call.lim), Cost: 1}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			err := call.admit(s, ctx, req, call.n)
			cancel()
			assert.ErrorIs(t, err, context.DeadlineExceeded, "%s, context timeouts %v", call.name, ctxTimeouts)
			// The give-back arrives once Redis's answer has: wait for it.
			// Had the Store counted Redis down, it would answer
			// ErrUnavailable for a minute without asking.
			deadline := time.Now().Add(10 * time.Second)
			var d driver.Decision
			for {
				d, err = s.Admit(context.Background(), req)
				if err != nil || d.Allowed || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			allowed := 0
			for err == nil && d.Allowed {
				allowed++
				d, err = s.Admit(context.Background(), req)
			}
			assert.NoError(t, err, "%s, context timeouts %v: admissions afterwards", call.name, ctxTimeouts)
			assert.Equal(t, call.n, allowed, "%s, context timeouts %v: admissions allowed afterwards: want the abandoned ones given back", call.name, ctxTimeouts)
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
	require.NoError(t, c.Ping(context.Background()).Err())
	batch := []driver.Admission{{Request: driver.Request{Key: "batch", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}}}
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
	assert.NoError(t, batch[0].Err, "AdmitBatch in flight at Close")
	assert.True(t, batch[0].Decision.Allowed, "AdmitBatch in flight at Close")
	assert.NoError(t, pauseErr, "Pause in flight at Close")
	_, err := s.Admit(context.Background(), batch[0].Request)
	assert.ErrorIs(t, err, bucket.ErrClosed, "Admit after Close")
}
