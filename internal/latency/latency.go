// Package latency maps durations to log-linear buckets (Shape), for the
// dispatcher's admission-wait figures, and counts them for the benchmarks
// (backend/redisstore's and the benchmarks program's) in a Histogram whose
// buckets are 1/16 of a power of two wide, so that a quantile is within
// 6.25% of the true one. Adding allocates nothing. A Histogram is not safe
// for concurrent use: give each goroutine its own and Merge them.
package latency

import (
	"math"
	"time"
)

// sixteenths is a Histogram's shape.
var sixteenths = NewShape(4, 1, math.MaxInt64)

// A Histogram counts durations. The zero Histogram is empty.
type Histogram struct {
	n      int
	counts [959]int // sixteenths.Buckets() (TestQuantiles checks it)
}

// Add counts d (at least 1 ns).
func (h *Histogram) Add(d time.Duration) {
	h.n++
	h.counts[sixteenths.Bucket(int64(d))]++
}

// Count returns how many durations h counted.
func (h *Histogram) Count() int { return h.n }

// Merge adds o's counts to h's.
func (h *Histogram) Merge(o *Histogram) {
	h.n += o.n
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// Quantile returns the middle of the bucket holding the q-quantile, or 0
// if h is empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	want := int(q*float64(h.n)) + 1
	seen := 0
	for i, c := range h.counts {
		seen += c
		if seen >= want {
			lo := sixteenths.Lower(i)
			return time.Duration(lo + (sixteenths.Upper(i)+1-lo)/2)
		}
	}
	return 0
}
