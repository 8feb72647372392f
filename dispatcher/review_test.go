package dispatcher_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
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
