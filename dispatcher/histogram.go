package dispatcher

import (
	"sort"
	"time"
)

// Histograms are a Dispatcher's distributions of durations, for exporters
// of metrics (see Dispatcher.Histograms).
type Histograms struct {
	// AdmissionWait is the time from Submit to the handler's start, one
	// per run: a run after a retry-after counts from when the job was put
	// back (jobinfo.Info.Waited).
	AdmissionWait Histogram
	// RoundTrip is the time the backend took to decide an admission
	// batch (Stats.RoundTrips), failed batches included.
	RoundTrip Histogram
}

// A Histogram is a snapshot of a distribution of durations, in the form
// Prometheus and OpenTelemetry export: Count durations that add up to
// Sum, and cumulative bucket counts. Its buckets are eight per power of
// two, each holding durations up to 12.5% below its upper bound.
type Histogram struct {
	Count int64
	Sum   time.Duration
	// Buckets are the buckets that hold durations, by ascending
	// UpperBound; each Bucket's Count is of the durations at most its
	// UpperBound, so the last's is Count.
	Buckets []Bucket
}

// A Bucket of a Histogram: Count durations were at most UpperBound.
type Bucket struct {
	UpperBound time.Duration
	Count      int64
}

// CountsAt returns, for each of bounds (ascending, as an exporter's
// buckets are), how many of h's durations were at most that long. They
// are read from h's buckets: a duration within 12.5% below a bound may be
// counted only from the next bound on, never earlier.
func (h Histogram) CountsAt(bounds []time.Duration) []int64 {
	counts := make([]int64, len(bounds))
	for i, b := range bounds {
		// The buckets whose upper bound is at most b hold only durations
		// at most b.
		n := sort.Search(len(h.Buckets), func(j int) bool { return h.Buckets[j].UpperBound > b })
		if n > 0 {
			counts[i] = h.Buckets[n-1].Count
		}
	}
	return counts
}

// Histograms returns a snapshot of the dispatcher's histograms. It is
// safe to call at any time, while jobs run; it reads each worker's
// histogram (about 4 KiB) and allocates the buckets that hold durations,
// and costs the jobs nothing: they record their durations anyway. Counts
// recorded while it reads may show in one histogram's buckets and not yet
// in its Sum.
func (d *Dispatcher[T, R]) Histograms() Histograms {
	wait := newHistogramSum(fine, len(histogram{}.counts))
	for w := range d.crew {
		wait.add(&d.crew[w].wait)
	}
	rtt := newHistogramSum(fine, len(histogram{}.counts))
	rtt.add(&d.stats.roundTrips)
	return Histograms{AdmissionWait: wait.histogram(), RoundTrip: rtt.histogram()}
}

// histogram returns s as a Histogram.
func (s *histogramSum) histogram() Histogram {
	h := Histogram{Count: s.n, Sum: time.Duration(s.total)}
	var seen int64
	for i, c := range s.counts {
		if c == 0 {
			continue
		}
		seen += c
		h.Buckets = append(h.Buckets, Bucket{UpperBound: time.Duration(s.shape.Upper(i)), Count: seen})
	}
	return h
}
