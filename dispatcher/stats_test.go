package dispatcher_test

import (
	"context"
	"math"
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

// TestHistogramCountsAtEmpty: an empty histogram counts nothing at any
// bound.
func TestHistogramCountsAtEmpty(t *testing.T) {
	var h dispatcher.Histogram
	assert.Equal(t, []int64{0, 0}, h.CountsAt([]time.Duration{0, time.Hour}))
}
