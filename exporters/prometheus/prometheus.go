// Package prometheus exports a leakybucket Dispatcher's figures as
// Prometheus metrics: a Collector reads them when Prometheus scrapes, and
// costs the dispatcher's jobs nothing in between. It is a module of its
// own, so that the main module's users do not pull client_golang.
package prometheus

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leakybucket/leakybucket/dispatcher"
)

// Source is what a Collector reads: a *dispatcher.Dispatcher[T, R] of any
// T and R has these methods.
type Source interface {
	Stats() dispatcher.Stats
	Histograms() dispatcher.Histograms
	KeyStats(key string) (dispatcher.KeyStats, bool)
}

// MaxKeys bounds Options.Keys: each key is a label value, and a series of
// its own in every per-key metric.
const MaxKeys = 1000

// DefaultWaitBuckets are the upper bounds, in seconds, of
// leakybucket_admission_wait_seconds: from a millisecond to an hour, as a
// rate limit can hold jobs back for minutes.
var DefaultWaitBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// DefaultRoundTripBuckets are the upper bounds, in seconds, of
// leakybucket_backend_round_trip_seconds: from 50µs (a backend in
// memory) to a second.
var DefaultRoundTripBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}

// ErrInvalidOptions is wrapped by the errors NewCollector returns for
// invalid Options.
var ErrInvalidOptions = errors.New("prometheus: invalid options")

// Options configure a Collector. The zero value is valid: no dispatcher
// label, the default buckets, no per-key metrics.
type Options struct {
	// Name, if not empty, is the value of the label "dispatcher" on every
	// metric, to tell several dispatchers in one process apart.
	Name string
	// WaitBuckets and RoundTripBuckets are the histograms' upper bounds
	// in seconds, ascending (Prometheus adds +Inf). Default:
	// DefaultWaitBuckets and DefaultRoundTripBuckets. The dispatcher's
	// own buckets are eight per power of two: a duration up to 12.5%
	// below a bound may be counted only from the next bound on.
	WaitBuckets, RoundTripBuckets []float64
	// Keys, at most MaxKeys of them, get the leakybucket_key_* metrics,
	// with the label "key". The dispatcher must keep their figures
	// (dispatcher.WithKeyStats); a key it keeps none for at a scrape
	// (not used within the last minute) has no series in that scrape, and
	// its counters start again from zero when it is used again. Default:
	// none.
	Keys []string
}

// A Collector is a prometheus.Collector of a Dispatcher's figures. Each
// Collect reads the dispatcher's Stats and Histograms (about 4 KiB per
// worker) and each of Options.Keys's KeyStats. It is safe for concurrent
// use.
type Collector struct {
	src             Source
	waitBounds      []time.Duration
	roundTripBounds []time.Duration
	waitUpper       []float64
	roundTripUpper  []float64
	keys            []string
	submitted       *prometheus.Desc
	completed       *prometheus.Desc
	queued          *prometheus.Desc
	waiting         *prometheus.Desc
	running         *prometheus.Desc
	retried         *prometheus.Desc
	requeued        *prometheus.Desc
	admissions      *prometheus.Desc
	wait            *prometheus.Desc
	roundTrip       *prometheus.Desc
	backendErrors   *prometheus.Desc
	leasesLost      *prometheus.Desc
	learned         *prometheus.Desc
	keySubmitted    *prometheus.Desc
	keyCompleted    *prometheus.Desc
	keyRetried      *prometheus.Desc
	keyThrottled    *prometheus.Desc
	keyLate         *prometheus.Desc
	keyInterval     *prometheus.Desc
}

// NewCollector returns a Collector of src's figures, to register with a
// prometheus.Registerer. It returns an error wrapping ErrInvalidOptions
// if opts are invalid.
func NewCollector(src Source, opts Options) (*Collector, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: nil Source", ErrInvalidOptions)
	}
	if !utf8.ValidString(opts.Name) {
		return nil, fmt.Errorf("%w: Name %q is not UTF-8", ErrInvalidOptions, opts.Name)
	}
	c := &Collector{src: src}
	var err error
	if c.waitUpper, c.waitBounds, err = bounds("WaitBuckets", opts.WaitBuckets, DefaultWaitBuckets); err != nil {
		return nil, err
	}
	if c.roundTripUpper, c.roundTripBounds, err = bounds("RoundTripBuckets", opts.RoundTripBuckets, DefaultRoundTripBuckets); err != nil {
		return nil, err
	}
	if len(opts.Keys) > MaxKeys {
		return nil, fmt.Errorf("%w: %d Keys, more than MaxKeys (%d)", ErrInvalidOptions, len(opts.Keys), MaxKeys)
	}
	seen := make(map[string]bool, len(opts.Keys))
	for _, k := range opts.Keys {
		switch {
		case k == "" || !utf8.ValidString(k):
			return nil, fmt.Errorf("%w: key %q is empty or not UTF-8", ErrInvalidOptions, k)
		case seen[k]:
			return nil, fmt.Errorf("%w: key %q given twice", ErrInvalidOptions, k)
		}
		seen[k] = true
	}
	c.keys = slices.Clone(opts.Keys)

	var constLabels prometheus.Labels
	if opts.Name != "" {
		constLabels = prometheus.Labels{"dispatcher": opts.Name}
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("leakybucket_"+name, help, labels, constLabels)
	}
	c.submitted = desc("jobs_submitted_total", "Jobs accepted by Submit.")
	c.completed = desc("jobs_completed_total", "Jobs resolved, by outcome: succeeded, failed (the handler returned an error or panicked, or the job's limit can never admit it) or cancelled (before it started).", "outcome")
	c.queued = desc("jobs_queued", "Jobs accepted and not started, including those waiting.")
	c.waiting = desc("jobs_waiting", "Queued jobs of keys their bucket holds back right now: throttled, paused or booked ahead.")
	c.running = desc("jobs_running", "Handlers running.")
	c.retried = desc("jobs_retried_total", "Times a job was queued again after its handler asked for a retry-after.")
	c.requeued = desc("jobs_requeued_total", "Times an admitted job went back to its key's queue to be admitted again: it reached its worker late or behind its key, or it was booked ahead when that happened or a retry-after paused the key.")
	c.admissions = desc("admissions_total", "Admissions the backend decided, by result: admitted, throttled (refused until the key's next slot), paused (given back because a retry-after paused the key meanwhile) or at_cap (refused because the key's leases for work in flight were all held).", "result")
	c.wait = desc("admission_wait_seconds", "Time from Submit (or from a retry-after's requeue) to the handler's start, one per run.")
	c.roundTrip = desc("backend_round_trip_seconds", "Time the backend took to decide an admission batch; its count is the round trips.")
	c.backendErrors = desc("backend_errors_total", "Admissions the backend failed to decide (tried again later).")
	c.leasesLost = desc("leases_lost_total", "Leases of running handlers a renewal found gone: another holder may have taken the place.")
	c.learned = desc("learned_total", "Reports of what a service said of its limit that keys of learned limits took from their handlers.")
	c.keySubmitted = desc("key_jobs_submitted_total", "A key's jobs accepted by Submit, for the keys configured.", "key")
	c.keyCompleted = desc("key_jobs_completed_total", "A key's jobs resolved, by outcome, for the keys configured.", "key", "outcome")
	c.keyRetried = desc("key_jobs_retried_total", "Times a key's job was queued again after a retry-after, for the keys configured.", "key")
	c.keyThrottled = desc("key_admissions_throttled_total", "A key's admissions its bucket refused, for the keys configured.", "key")
	c.keyLate = desc("key_admissions_late_total", "A key's admissions given back because the job reached its worker late, for the keys configured.", "key")
	c.keyInterval = desc("key_interval_seconds", "The emission interval a key's bucket applied at its latest admission or report: its limit's own, or the slower one it learned; for the keys configured, once they have one.", "key")
	return c, nil
}

// bounds returns a histogram's upper bounds in seconds and as durations,
// or the defaults.
func bounds(name string, upper, defaults []float64) ([]float64, []time.Duration, error) {
	if upper == nil {
		upper = defaults
	}
	if len(upper) == 0 {
		return nil, nil, fmt.Errorf("%w: %s is empty", ErrInvalidOptions, name)
	}
	ds := make([]time.Duration, len(upper))
	for i, u := range upper {
		if math.IsNaN(u) || u < 0 || u > math.MaxInt64/float64(time.Second) || i > 0 && u <= upper[i-1] {
			return nil, nil, fmt.Errorf("%w: %s: %v is not a duration in seconds above the bound before it", ErrInvalidOptions, name, u)
		}
		ds[i] = time.Duration(u * float64(time.Second))
	}
	return slices.Clone(upper), ds, nil
}

// Describe sends the descriptions of c's metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.submitted, c.completed, c.queued, c.waiting, c.running, c.retried, c.requeued,
		c.admissions, c.wait, c.roundTrip, c.backendErrors, c.leasesLost, c.learned,
	} {
		ch <- d
	}
	if len(c.keys) > 0 {
		for _, d := range []*prometheus.Desc{
			c.keySubmitted, c.keyCompleted, c.keyRetried, c.keyThrottled, c.keyLate, c.keyInterval,
		} {
			ch <- d
		}
	}
}

// Collect reads the dispatcher's figures and sends them as metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st, hs := c.src.Stats(), c.src.Histograms()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(c.submitted, st.Submitted)
	counter(c.completed, st.Succeeded, "succeeded")
	counter(c.completed, st.Failed, "failed")
	counter(c.completed, st.Cancelled, "cancelled")
	gauge(c.queued, st.Queued)
	gauge(c.waiting, st.Waiting)
	gauge(c.running, st.Running)
	counter(c.retried, st.Retried)
	counter(c.requeued, st.Requeued)
	counter(c.admissions, st.Admitted, "admitted")
	counter(c.admissions, st.Throttled, "throttled")
	counter(c.admissions, st.Paused, "paused")
	counter(c.admissions, st.AtCap, "at_cap")
	counter(c.backendErrors, st.BackendErrors)
	counter(c.leasesLost, st.LeasesLost)
	counter(c.learned, st.Learned)
	ch <- histogram(c.wait, hs.AdmissionWait, c.waitUpper, c.waitBounds)
	ch <- histogram(c.roundTrip, hs.RoundTrip, c.roundTripUpper, c.roundTripBounds)

	for _, key := range c.keys {
		ks, ok := c.src.KeyStats(key)
		if !ok {
			continue
		}
		counter(c.keySubmitted, ks.Submitted, key)
		counter(c.keyCompleted, ks.Succeeded, key, "succeeded")
		counter(c.keyCompleted, ks.Failed, key, "failed")
		counter(c.keyCompleted, ks.Cancelled, key, "cancelled")
		counter(c.keyRetried, ks.Retried, key)
		counter(c.keyThrottled, ks.Throttled, key)
		counter(c.keyLate, ks.Late, key)
		if ks.Interval > 0 {
			ch <- prometheus.MustNewConstMetric(c.keyInterval, prometheus.GaugeValue, ks.Interval.Seconds(), key)
		}
	}
}

// histogram returns h as a Prometheus histogram with the given bounds.
func histogram(d *prometheus.Desc, h dispatcher.Histogram, upper []float64, bounds []time.Duration) prometheus.Metric {
	counts := h.CountsAt(bounds)
	buckets := make(map[float64]uint64, len(upper))
	for i, u := range upper {
		buckets[u] = uint64(counts[i])
	}
	return prometheus.MustNewConstHistogram(d, uint64(h.Count), h.Sum.Seconds(), buckets)
}
