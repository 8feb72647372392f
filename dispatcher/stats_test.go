package dispatcher_test

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// TestStatsForExporters: with one key at 10/s and burst 1 on one worker,
// the n-th of 20 jobs waits n×100ms; the admissions, round trips and
// histograms an exporter reads say so.
func TestStatsForExporters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, double, nil, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(10))), dispatcher.WithWorkers(1))
		var fs []*dispatcher.Future[int]
		for i := range 20 {
			f, err := d.Submit(context.Background(), i)
			require.NoError(t, err)
			fs = append(fs, f)
		}
		for _, f := range fs {
			_, err := f.Wait(context.Background())
			require.NoError(t, err)
		}
		st, hs := d.Stats(), d.Histograms()
		assert.EqualValues(t, 20, st.Admitted, "Stats.Admitted, one per job")
		assert.Positive(t, st.Throttled, "Stats.Throttled with 20 jobs at 10/s")
		assert.Zero(t, st.Paused, "Stats.Paused without a retry-after")
		assert.Zero(t, st.Requeued, "Stats.Requeued with no job late")
		assert.Positive(t, st.RoundTrips, "Stats.RoundTrips")
		assert.Equal(t, st.RoundTrips, hs.RoundTrip.Count, "Histograms().RoundTrip.Count against Stats.RoundTrips")

		w := hs.AdmissionWait
		assert.EqualValues(t, 20, w.Count, "AdmissionWait.Count")
		assert.Equal(t, 19*time.Second, w.Sum, "AdmissionWait.Sum of 0, 100ms, …, 1.9s")
		require.NotEmpty(t, w.Buckets)
		assert.Equal(t, w.Count, w.Buckets[len(w.Buckets)-1].Count, "the last bucket's count")
		for i := 1; i < len(w.Buckets); i++ {
			assert.Less(t, w.Buckets[i-1].UpperBound, w.Buckets[i].UpperBound, "bucket %d's upper bound", i)
			assert.Less(t, w.Buckets[i-1].Count, w.Buckets[i].Count, "bucket %d's count (only buckets that hold durations)", i)
		}
		bounds := []time.Duration{0, 50 * time.Millisecond, 450 * time.Millisecond, time.Second, 10 * time.Second, math.MaxInt64}
		// 1s is in a bucket that reaches past 1s: counted from 10s on.
		assert.Equal(t, []int64{1, 1, 5, 10, 20, 20}, w.CountsAt(bounds), "CountsAt(%v)", bounds)
	})
}

// TestStatsRequeued: a job that reaches its worker late, and bookings
// put back by a retry-after, count in Requeued, and each run under a
// limit took one admission: Admitted = runs + Requeued.
func TestStatsRequeued(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler func(j task, once *atomic.Bool) (int, error)
	}{
		// B holds the only worker for 8ms while A's jobs are booked: A1
		// reaches it late.
		{"late", func(j task, _ *atomic.Bool) (int, error) {
			if j.key == "B" {
				time.Sleep(8 * time.Millisecond)
			}
			return 0, nil
		}},
		// A1 runs for 15ms, then asks for a retry-after: A2 and A3,
		// booked at 10ms and 20ms meanwhile, go back.
		{"retry-after", func(j task, once *atomic.Bool) (int, error) {
			if j.key == "A" && j.n == 1 && once.CompareAndSwap(false, true) {
				time.Sleep(15 * time.Millisecond)
				return 0, &retryAfterError{delay: 50 * time.Millisecond, err: errors.New("429")}
			}
			return 0, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var once atomic.Bool
				d := newDispatcher(t, func(_ context.Context, j task) (int, error) { return tc.handler(j, &once) }, taskKey,
					dispatcher.WithWorkers(1), dispatcher.WithBookAhead(30*time.Millisecond),
					dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100))))
				var fs []*dispatcher.Future[int]
				for _, tk := range []task{{"B", 0}, {"A", 1}, {"A", 2}, {"A", 3}} {
					f, err := d.Submit(context.Background(), tk)
					require.NoError(t, err)
					fs = append(fs, f)
				}
				for _, f := range fs {
					_, err := f.Wait(context.Background())
					require.NoError(t, err)
				}
				st := d.Stats()
				require.Positive(t, st.Requeued, "Stats.Requeued: the test put no job back")
				runs := d.Histograms().AdmissionWait.Count
				assert.Equal(t, runs+st.Requeued, st.Admitted, "Stats.Admitted, with %d runs and %d requeued", runs, st.Requeued)
			})
		})
	}
}

// TestStatsPaused: an admission the backend allows while a retry-after
// pauses its key is given back and counts as paused, not admitted. A1
// runs for 10ms and asks for a retry-after while the scheduler, stalled
// after the backend allowed A2, has not acted on it.
func TestStatsPaused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDispatcher(t, func(_ context.Context, j task) (int, error) {
			if j.n == 1 {
				time.Sleep(10 * time.Millisecond)
				return 0, &retryAfterError{delay: 50 * time.Millisecond, err: errors.New("429")}
			}
			return 0, nil
		}, taskKey, dispatcher.WithWorkers(2), dispatcher.WithMaxRequeues(1),
			dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000).WithBurst(10))))
		var batches atomic.Int64
		dispatcher.SetAfterAdmit(d, func() {
			if batches.Add(1) == 2 { // A2's
				time.Sleep(20 * time.Millisecond)
			}
		})
		var fs []*dispatcher.Future[int]
		for n := range 2 {
			f, err := d.Submit(context.Background(), task{"A", n + 1})
			require.NoError(t, err)
			fs = append(fs, f)
		}
		for _, f := range fs {
			f.Wait(context.Background())
		}
		st := d.Stats()
		assert.EqualValues(t, 1, st.Paused, "Stats.Paused")
		assert.EqualValues(t, 1, st.Retried, "Stats.Retried")
		runs := d.Histograms().AdmissionWait.Count
		assert.Equal(t, runs+st.Requeued, st.Admitted, "Stats.Admitted, with %d runs and %d requeued", runs, st.Requeued)
	})
}

// TestHistogramCountsAtEmpty: an empty histogram counts nothing at any
// bound.
func TestHistogramCountsAtEmpty(t *testing.T) {
	var h dispatcher.Histogram
	assert.Equal(t, []int64{0, 0}, h.CountsAt([]time.Duration{0, time.Hour}))
}
