package latency

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Quantiles are within 6.25% of the exact ones, and merging is adding.
func TestQuantiles(t *testing.T) {
	if n := sixteenths.Buckets(); n != len(Histogram{}.counts) {
		t.Fatalf("the shape has %d buckets, the array %d", n, len(Histogram{}.counts))
	}
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
	if a.Count() != len(all) {
		t.Fatalf("Count = %d after Merge, want %d", a.Count(), len(all))
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		exact := all[int(q*float64(len(all)))]
		got := a.Quantile(q)
		if d := float64(got-exact) / float64(exact); d < -0.0625 || d > 0.0625 {
			t.Errorf("Quantile(%v) = %v, exact %v: %.1f%% off", q, got, exact, 100*d)
		}
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Error("an empty histogram's quantile is not 0")
	}
}
