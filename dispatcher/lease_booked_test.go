package dispatcher_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// TestInflightBookedLeaseKept: a capped job booked ahead of its slot holds
// its lease until it runs, however far ahead the booking window reaches
// beside the lease TTL: the key's next job must not take its place while
// it waits, and no more than the cap run at once.
func TestInflightBookedLeaseKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		lim := newLimiter(t, bucket.PerSecond(2).WithInflight(2))
		d := newDispatcher(t, g.handle, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithWorkers(8),
			dispatcher.WithBookAhead(time.Second), dispatcher.WithLeaseTTL(30*time.Millisecond))
		var fs []*dispatcher.Future[int]
		for i := range 3 {
			f, err := d.Submit(context.Background(), task{"A", i})
			require.NoError(t, err)
			fs = append(fs, f)
		}
		time.Sleep(5 * time.Second) // job 0 runs all along; 1 is booked 500ms ahead
		synctest.Wait()
		assert.LessOrEqual(t, g.peak["A"], 2, "A's handlers at once, cap 2")
		for range fs {
			g.release <- struct{}{}
		}
		for _, f := range fs {
			_, err := f.Wait(context.Background())
			require.NoError(t, err)
		}
	})
}
