package dispatcher_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/jobinfo"
)

// TestKeyStatsWhileKeysReused: KeyStats looks a key up while the
// scheduler drops keys whose jobs have all started and reuses their
// states for other keys. Reading a state once the scheduler's lock is let
// go races (under -race) with its reuse, and could report another key's
// figures.
func TestKeyStatsWhileKeysReused(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, j task) (int, error) { return j.n, nil }, taskKey,
		dispatcher.WithWorkers(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000).WithBurst(1_000_000))))
	ctx := context.Background()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			_, _ = d.KeyStats("a")
			for range 100 {
				runtime.Gosched() // out of the lock a while, as a caller between reads
			}
		}
	})
	for i := range 2000 {
		_, err := d.Do(ctx, task{"a", i})
		require.NoError(t, err)
		_, err = d.Do(ctx, task{"b", i})
		require.NoError(t, err)
	}
	stop.Store(true)
	wg.Wait()
}

// TestRequeuedContextWatchesParent: a job answered retry-after runs again
// with the same handler context, reset (resetContext). A goroutine the
// first run left behind may derive from that context (context.AfterFunc,
// WithCancel) as the job goes back to its queue: it must not see a
// context whose Done is closed but whose Err is nil, and the second run's
// context must still end when the Submit context does.
//
// It fails today (since before c27e380): the leftover goroutine's
// context.AfterFunc finds the first run's Done closed and, the context
// reset meanwhile, Err nil, and the context package panics ("missing
// cancel error"), taking the process down. A second run whose Done never
// closed would deadlock the bubble (suspected, not reproduced: AfterFunc's
// fallback in job.go makes a handlerContext that does not watch the
// parent). The fix is a context object per run for the runs after the
// first; remove the Skip with it.
func TestRequeuedContextWatchesParent(t *testing.T) {
	t.Skip("known defect, see the comment: a requeued job reuses its handler context")
	synctest.Test(t, func(t *testing.T) {
		type started struct{}
		var (
			leftover sync.WaitGroup
			stop     atomic.Bool
			running  = make(chan started)
		)
		d := newDispatcher(t, func(ctx context.Context, j task) (int, error) {
			if info, _ := jobinfo.FromContext(ctx); info.Attempt == 1 {
				stop.Store(false)
				spinning := make(chan struct{})
				leftover.Go(func() {
					context.AfterFunc(ctx, func() {})
					close(spinning)
					for !stop.Load() {
						context.AfterFunc(ctx, func() {})
					}
				})
				<-spinning // on a core of its own as the run ends
				return 0, &retryAfterError{}
			}
			stop.Store(true)
			leftover.Wait()
			done := ctx.Done()
			running <- started{}
			<-done
			return 0, ctx.Err()
		}, taskKey, dispatcher.WithWorkers(1), dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1_000_000).WithBurst(1_000_000))))
		for i := range 300 {
			ctx, cancel := context.WithCancel(context.Background())
			f, err := d.Submit(ctx, task{"a", i})
			require.NoError(t, err)
			<-running
			cancel()
			_, err = f.Wait(context.Background())
			require.ErrorIs(t, err, context.Canceled, "round %d", i)
		}
	})
}
