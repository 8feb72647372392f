package bucket_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Acquire takes up to Inflight leases of a key; the next waits, and a
// Release in this process lets it in at once; another key has its own
// cap; a waiter whose context ends keeps nothing.
func TestAcquire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1000).WithBurst(100).WithInflight(2))
		a, err := l.Acquire(ctx, "k", 1)
		require.NoError(t, err)
		b, err := l.Acquire(ctx, "k", 1)
		require.NoError(t, err)
		other, err := l.Acquire(ctx, "other", 1)
		require.NoError(t, err)

		third := make(chan *bucket.Lease)
		go func() {
			c, err := l.Acquire(ctx, "k", 1)
			assert.NoError(t, err)
			third <- c
		}()
		time.Sleep(time.Hour) // the third waits at the cap, however long
		synctest.Wait()
		select {
		case <-third:
			t.Fatal("a third lease with inflight=2 was taken")
		default:
		}
		start := time.Now()
		require.NoError(t, a.Release(ctx))
		c := <-third
		assert.Equal(t, start, time.Now(), "the waiter took the released place later than at once")
		require.NoError(t, a.Release(ctx), "a second Release")

		short, cancel := context.WithTimeout(ctx, time.Minute)
		_, err = l.Acquire(short, "k", 1)
		cancel()
		assert.ErrorIs(t, err, context.DeadlineExceeded, "Acquire at the cap until the context's deadline")
		for _, ls := range []*bucket.Lease{b, c, other} {
			require.NoError(t, ls.Release(ctx))
		}
		for range 2 { // the cancelled waiter kept nothing
			ls, err := l.Acquire(ctx, "k", 1)
			require.NoError(t, err)
			defer ls.Release(ctx)
		}
	})
}

// A Lease is renewed while held: another holder never gets in past its
// time to live; a lease taken away from its holder shows as Lost at the
// next renewal.
func TestLeaseRenewedAndLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		store := newStore(t, nil)
		l := newLimiter(t, store, bucket.PerSecond(1000).WithInflight(1), bucket.WithLeaseTTL(time.Second))
		a, err := l.Acquire(ctx, "k", 1)
		require.NoError(t, err)
		short, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = l.Acquire(short, "k", 1)
		cancel()
		assert.ErrorIs(t, err, context.DeadlineExceeded, "a second holder got in past the first's 1s time to live: it was not renewed")
		select {
		case <-a.Lost():
			t.Fatal("a renewed lease reported lost")
		default:
		}
		require.NoError(t, store.Release(ctx, []driver.LeaseRef{bucket.LeaseRefOf(a)}))
		<-a.Lost() // the next renewal finds it gone
		require.NoError(t, a.Release(ctx))
	})
}

// Allow, Wait and Reserve refuse a capped key, which only Acquire may
// admit; a capped limit needs a backend that keeps leases; without a cap
// Acquire waits for the rate alone and its Lease holds nothing.
func TestAcquireErrors(t *testing.T) {
	ctx := context.Background()
	store := newStore(t, nil)
	capped := bucket.PerSecond(10).WithInflight(1)
	l := newLimiter(t, store, capped)
	_, err := l.Allow(ctx, "k")
	assert.ErrorIs(t, err, bucket.ErrNoLease, "Allow")
	assert.ErrorIs(t, l.Wait(ctx, "k"), bucket.ErrNoLease, "Wait")
	_, err = l.Reserve(ctx, "k", 1, time.Second)
	assert.ErrorIs(t, err, bucket.ErrNoLease, "Reserve")

	_, err = bucket.NewLimiter(struct{ driver.Backend }{store}, capped)
	assert.ErrorIs(t, err, bucket.ErrNoLeases, "NewLimiter with a capped limit on a backend without leases")
	_, err = bucket.NewLimiter(store, bucket.PerSecond(1), bucket.WithLeaseTTL(time.Millisecond))
	assert.ErrorIs(t, err, driver.ErrInvalidLeaseTTL, "WithLeaseTTL(1ms)")

	plain := newLimiter(t, store, bucket.PerSecond(10))
	ls, err := plain.Acquire(ctx, "k", 1)
	require.NoError(t, err)
	assert.Nil(t, ls.Lost(), "Lost of a Lease that holds nothing")
	assert.NoError(t, ls.Release(ctx))
}

// Holders on many goroutines never hold more than Inflight leases of a
// key at once, judged by backendtest.CheckInflight from the intervals
// they report.
func TestAcquireConcurrent(t *testing.T) {
	ctx := context.Background()
	const cap = 3
	l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1_000_000).WithBurst(1000).WithInflight(cap))
	var (
		mu    sync.Mutex
		spans []backendtest.Interval
		wg    sync.WaitGroup
	)
	for g := range 8 {
		wg.Go(func() {
			for n := range 100 {
				ls, err := l.Acquire(ctx, "k", 1)
				if !assert.NoError(t, err) {
					return
				}
				from := time.Now()
				time.Sleep(time.Duration((g+n)%3) * 50 * time.Microsecond)
				to := time.Now()
				assert.NoError(t, ls.Release(ctx))
				mu.Lock()
				spans = append(spans, backendtest.Interval{From: from, To: to})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	assert.Len(t, spans, 800)
	assert.NoError(t, backendtest.CheckInflight(cap, spans))
}
