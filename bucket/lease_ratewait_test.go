package bucket_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
)

// A lease Acquire takes with an admission booked ahead (the rate makes it
// wait) must still be held when Acquire returns: the lease is taken when
// the backend decides, not when the slot comes, so a rate wait longer
// than the lease's time to live must not let it expire unrenewed, and a
// third holder must not get in beside two.
func TestAcquireLeaseOutlivesRateWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		l := newLimiter(t, newStore(t, nil), bucket.PerMinute(6).WithInflight(2), bucket.WithLeaseTTL(time.Second))
		a, err := l.Acquire(ctx, "k", 1) // at once: the burst
		require.NoError(t, err)
		defer a.Release(ctx)

		second := make(chan *bucket.Lease)
		go func() {
			b, err := l.Acquire(ctx, "k", 1) // booked 10s ahead; its lease is taken now
			if err == nil {
				second <- b
			}
		}()
		time.Sleep(2 * time.Second) // past b's 1s time to live, before its slot
		third := make(chan *bucket.Lease)
		go func() {
			c, err := l.Acquire(ctx, "k", 1)
			if err == nil {
				third <- c
			}
		}()
		b := <-second
		time.Sleep(time.Minute) // a and b are held, renewed, all along
		synctest.Wait()
		var c *bucket.Lease
		select {
		case c = <-third:
		default:
		}
		lost := false
		select {
		case <-b.Lost():
			lost = true
		default:
		}
		assert.False(t, lost, "the lease Acquire returned was lost: it expired while Acquire waited for its slot")
		assert.Nil(t, c, "a third lease of a key with inflight=2 was taken while two were held")
		require.NoError(t, b.Release(ctx))
		if c == nil {
			c = <-third // the released place
		}
		require.NoError(t, c.Release(ctx))
	})
}
