package dispatcher_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// TestCancelledBookingFreesItsSlot: a job booked ahead whose context ends
// gives its slot back before the next job its caller submits is admitted,
// even when the caller submits at once, as Do returns on the context's
// end: the next job starts in the freed slot, not a slot later. Keys run
// side by side so that the submit often comes before the scheduler has
// seen the cancellation.
func TestCancelledBookingFreesItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const keys = 50
		lim := newLimiter(t, bucket.PerSecond(10)) // one start per 100ms and key
		var (
			mu     sync.Mutex
			starts = map[string][]time.Duration{}
		)
		begin := time.Now()
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			mu.Lock()
			starts[j.key] = append(starts[j.key], time.Since(begin))
			mu.Unlock()
			return j.n, nil
		}, taskKey, dispatcher.WithWorkers(4), dispatcher.WithQueue(3*keys),
			dispatcher.WithLimiter(lim), dispatcher.WithBookAhead(time.Second))

		ctx := context.Background()
		cancels := make([]context.CancelFunc, keys)
		booked := make([]*dispatcher.Future[int], keys)
		cctxs := make([]context.Context, keys)
		for i := range keys {
			key := fmt.Sprint("k", i)
			_, err := d.Submit(ctx, task{key, 1}) // starts at once
			require.NoError(t, err)
			cctxs[i], cancels[i] = context.WithCancel(ctx)
			booked[i], err = d.Submit(cctxs[i], task{key, 2}) // booked for 100ms
			require.NoError(t, err)
		}
		synctest.Wait() // every second job is booked
		for i := range keys {
			cancels[i]()
			_, err := booked[i].Wait(cctxs[i]) // returns as its context ends
			require.ErrorIs(t, err, context.Canceled)
			_, err = d.Submit(ctx, task{fmt.Sprint("k", i), 3})
			require.NoError(t, err)
		}
		require.NoError(t, d.Shutdown(ctx))
		for i := range keys {
			key := fmt.Sprint("k", i)
			assert.Equal(t, []time.Duration{0, 100 * time.Millisecond}, starts[key],
				"starts of %s: the job submitted after the cancellation must take the freed slot", key)
		}
	})
}

// TestCancelledBookingsAllFreeTheirSlots: two bookings of one key whose
// shared context ends give both their slots back: the key's next job
// starts in the first freed slot, not the second.
func TestCancelledBookingsAllFreeTheirSlots(t *testing.T) {
	for _, immediate := range []bool{false, true} {
		t.Run(map[bool]string{false: "settled", true: "submit-at-once"}[immediate], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				lim := newLimiter(t, bucket.PerSecond(10)) // one start per 100ms
				var (
					mu     sync.Mutex
					starts []time.Duration
				)
				begin := time.Now()
				d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
					mu.Lock()
					starts = append(starts, time.Since(begin))
					mu.Unlock()
					return j.n, nil
				}, taskKey, dispatcher.WithWorkers(4),
					dispatcher.WithLimiter(lim), dispatcher.WithBookAhead(time.Second))
				ctx := context.Background()
				_, err := d.Submit(ctx, task{"A", 0}) // starts at once
				require.NoError(t, err)
				cctx, cancel := context.WithCancel(ctx)
				f1, err := d.Submit(cctx, task{"A", 1}) // booked for 100ms
				require.NoError(t, err)
				f2, err := d.Submit(cctx, task{"A", 2}) // booked for 200ms
				require.NoError(t, err)
				synctest.Wait()
				cancel()
				if !immediate {
					synctest.Wait()
				}
				_, err = d.Submit(ctx, task{"A", 3})
				require.NoError(t, err)
				require.NoError(t, d.Shutdown(ctx))
				for _, f := range []*dispatcher.Future[int]{f1, f2} {
					_, err := f.Result()
					assert.ErrorIs(t, err, context.Canceled)
				}
				assert.Equal(t, []time.Duration{0, 100 * time.Millisecond}, starts,
					"starts of A: the job after the cancelled bookings must take the first freed slot")
			})
		})
	}
}

// TestCancelStress: keys with several bookings each, whose contexts (some
// shared by a key's jobs) end at random moments, with a retry-after now
// and then, and a hard stop at a random moment or none: every job is
// resolved once, no key is left asking nothing (Shutdown would never
// return: synctest reports the deadlock), and the counters add up.
func TestCancelStress(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testCancelStress(t, seed) })
		})
	}
}

func testCancelStress(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 11))
	lim := newSlowRefundLimiter(t, bucket.PerSecond(100), time.Duration(rng.IntN(3))*time.Millisecond)
	var retried sync.Map
	d, err := dispatcher.New(func(ctx context.Context, j task) (int, error) {
		if j.n%5 == 0 {
			if _, again := retried.LoadOrStore(j.n, true); !again {
				return 0, &retryAfterError{delay: 15 * time.Millisecond}
			}
		}
		time.Sleep(time.Millisecond)
		return j.n, nil
	}, taskKey, dispatcher.WithWorkers(3), dispatcher.WithQueue(1000),
		dispatcher.WithLimiter(lim), dispatcher.WithBookAhead(50*time.Millisecond))
	require.NoError(t, err)
	ctx := context.Background()
	var (
		futures []*dispatcher.Future[int]
		cancels []context.CancelFunc
	)
	n := 0
	for k := range 8 {
		key := fmt.Sprint("k", k)
		shared, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		for range 6 {
			jctx := ctx
			switch rng.IntN(3) {
			case 0:
				jctx = shared
			case 1:
				var c context.CancelFunc
				jctx, c = context.WithCancel(ctx)
				cancels = append(cancels, c)
			}
			f, err := d.Submit(jctx, task{key, n})
			require.NoError(t, err)
			futures = append(futures, f)
			n++
		}
	}
	rng.Shuffle(len(cancels), func(i, j int) { cancels[i], cancels[j] = cancels[j], cancels[i] })
	stopAfter := rng.IntN(len(cancels) + 10)
	stopped := false
	for i, cancel := range cancels {
		time.Sleep(time.Duration(rng.IntN(4000)) * time.Microsecond)
		cancel()
		if !stopped && rng.IntN(2) == 0 { // the caller comes back at once with another job
			f, err := d.Submit(ctx, task{fmt.Sprint("k", rng.IntN(8)), n})
			require.NoError(t, err)
			futures = append(futures, f)
			n++
		}
		if i == stopAfter {
			require.NoError(t, d.Close())
			stopped = true
		}
		synctest.Wait()
		require.Equal(t, dispatcher.RecountWaiting(d), d.Stats().Waiting, "Stats.Waiting against a count over every key")
	}
	require.NoError(t, d.Shutdown(ctx))
	for i, f := range futures {
		_, err := f.Result()
		require.NotErrorIs(t, err, dispatcher.ErrPending, "future %d", i)
	}
	st := d.Stats()
	assert.Equal(t, st.Submitted, st.Succeeded+st.Failed+st.Cancelled, "%+v", st)
	assert.Zero(t, st.Waiting, "Stats.Waiting after Shutdown")
}
