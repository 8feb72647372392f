package latency

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Quantiles are within 6.25% of the exact ones, and merging is adding.
func TestQuantiles(t *testing.T) {
	require.Equal(t, len(Histogram{}.counts), sixteenths.Buckets(), "buckets of the shape and of the array")
	rng := rand.New(rand.NewPCG(1, 2))
	var a, b Histogram
	var all []time.Duration
	for i := range 100_000 {
		d := time.Duration(rng.ExpFloat64() * float64(300*time.Microsecond))
		all = append(all, max(d, 1))
		if i%2 == 0 {
			a.Add(d)
		} else {
			b.Add(d)
		}
	}
	a.Merge(&b)
	require.Equal(t, len(all), a.Count(), "Count after Merge")
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		exact := all[int(q*float64(len(all)))]
		assert.InEpsilon(t, float64(exact), float64(a.Quantile(q)), 0.0625, "Quantile(%v)", q)
	}
	var empty Histogram
	assert.Zero(t, empty.Quantile(0.5), "an empty histogram's quantile")
}
