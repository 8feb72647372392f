package dispatcher

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/internal/latency"
)

// Each bucket's upper bound is at or above every value it holds and within
// its shape's precision of it; the arrays are as long as the shapes need.
func TestHistogramShapes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sh     latency.Shape
		size   int
		within float64
	}{
		{"fine", fine, len(histogram{}.counts), 1.0 / 8},
		{"coarse", coarse, len(keyHistogram{}.counts), 1.0 / 4},
	} {
		assert.Equal(t, tc.size, tc.sh.Buckets(), "%s: buckets of the shape, want the array's length", tc.name)
		rng := rand.New(rand.NewPCG(1, 2))
		for range 100_000 {
			v := rng.Int64N(1 << rng.IntN(63))
			i := tc.sh.Bucket(v)
			require.True(t, i >= 0 && i < tc.size, "%s: Bucket(%d) = %d, outside [0, %d)", tc.name, v, i, tc.size)
			up := tc.sh.Upper(i)
			if v < tc.sh.Lower(0) || v > tc.sh.Upper(tc.size-1) {
				continue // clamped into the first or last bucket
			}
			require.True(t, up >= v && float64(up-v) <= tc.within*float64(v)+1,
				"%s: %d is in bucket %d, whose upper bound is %d", tc.name, v, i, up)
		}
		assert.Equal(t, 0, tc.sh.Bucket(0), "%s: bucket of 0", tc.name)
		assert.Equal(t, tc.size-1, tc.sh.Bucket(math.MaxInt64), "%s: bucket of MaxInt64", tc.name)
	}
}

func TestKeyHistogramPercentiles(t *testing.T) {
	var h keyHistogram
	for i := range 100 {
		h.record(int64(i+1) * int64(time.Millisecond)) // 1ms … 100ms
	}
	h.record(50) // below a microsecond: counted in the first bucket
	p := h.sum().percentiles()
	require.EqualValues(t, 101, p.Count, "Count")
	require.Equal(t, 100*time.Millisecond, p.Max, "Max")
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{{"P50", p.P50, 50 * time.Millisecond}, {"P90", p.P90, 90 * time.Millisecond}, {"P99", p.P99, 99 * time.Millisecond}} {
		assert.GreaterOrEqual(t, c.got, c.want, c.name)
		assert.LessOrEqual(t, float64(c.got), 1.25*float64(c.want), "%s = %v, want %v +25%%", c.name, c.got, c.want)
	}
}
