// Package otel exports a leakybucket Dispatcher's figures as OpenTelemetry
// metrics, read when a reader collects them, and traces each run of a
// handler with a span and two histograms (Middleware). It uses the
// OpenTelemetry API only: the application chooses the SDK and exporters.
// It is a module of its own, so that the main module's users do not pull
// OpenTelemetry.
package otel

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/leakybucket/leakybucket/dispatcher"
)

// ScopeName is the instrumentation scope of every meter and tracer this
// package asks a provider for.
const ScopeName = "github.com/leakybucket/leakybucket/exporters/otel"

// Source is what RegisterMetrics reads: a *dispatcher.Dispatcher[T, R] of
// any T and R has these methods.
type Source interface {
	Stats() dispatcher.Stats
	Histograms() dispatcher.Histograms
	KeyStats(key string) (dispatcher.KeyStats, bool)
}

// MaxKeys bounds Options.Keys. Each key is an attribute value, and a data
// point of its own in every leakybucket.per_key.* instrument, three in
// leakybucket.per_key.completed_jobs (one per outcome): 500 keys keep that
// instrument's 1,500 data points under the SDK's default cardinality limit
// of 2,000 per instrument, beyond which it folds data points into one
// overflow point.
const MaxKeys = 500

// Attribute keys.
const (
	// DispatcherNameKey tells several dispatchers in one process apart
	// (Options.Name, MiddlewareOptions.Name).
	DispatcherNameKey = attribute.Key("leakybucket.dispatcher.name")
	// OutcomeKey is how a job or a run ended: succeeded, failed or
	// cancelled for a job; succeeded, failed or retry_after for a run.
	OutcomeKey = attribute.Key("leakybucket.job.outcome")
	// AdmissionResultKey is the backend's answer to an admission:
	// admitted, throttled or paused.
	AdmissionResultKey = attribute.Key("leakybucket.admission.result")
	// KeyKey is a job's key: on the per-key instruments and on spans.
	KeyKey = attribute.Key("leakybucket.key")
)

// ErrInvalidOptions is wrapped by the errors RegisterMetrics returns for
// invalid Options.
var ErrInvalidOptions = errors.New("otel: invalid options")

// Options configure RegisterMetrics. The zero value is valid: the global
// MeterProvider, no dispatcher attribute, no per-key instruments.
type Options struct {
	// MeterProvider makes the instruments. Default (nil): the global one,
	// otel.GetMeterProvider(), as OpenTelemetry's instrumentation
	// libraries do; a global set later takes over.
	MeterProvider metric.MeterProvider
	// Name, if not empty, is the value of leakybucket.dispatcher.name on
	// every data point. Dispatchers registered on one MeterProvider need
	// names of their own: data points with the same attributes from two
	// callbacks are one data point, the last observed.
	Name string
	// Keys, at most MaxKeys of them, get the leakybucket.per_key.*
	// instruments, with the attribute leakybucket.key. The dispatcher
	// must keep their figures (dispatcher.WithKeyStats, which keeps them
	// for the keys its limiter admits); a key it keeps
	// none for at a collection (not used within the last minute) has no
	// data points in it, and its counters start again from zero when it is
	// used again. Default: none.
	Keys []string
}

// RegisterMetrics creates the leakybucket.* instruments on
// opts.MeterProvider and registers a callback that reads src's Stats and
// Histograms, and KeyStats of each of opts.Keys, at each collection: the
// dispatcher's jobs pay nothing for them in between. A collection costs
// those reads (Histograms reads about 4 KiB per worker) and an
// observation per data point, which allocates nothing here and is the
// SDK's to aggregate: with the SDK, about 25µs a collection and 5µs
// more per key listed, on a 2-core machine (BenchmarkCollect).
//
// Unregister on the Registration returned removes the callback: src is
// read no more, and its data points are gone from the next collection
// on. Unregister may be called more than once. RegisterMetrics returns an
// error wrapping ErrInvalidOptions if opts are invalid, or the
// MeterProvider's error if it refuses an instrument or the callback.
func RegisterMetrics(src Source, opts Options) (metric.Registration, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: nil Source", ErrInvalidOptions)
	}
	if err := checkOptions(opts); err != nil {
		return nil, err
	}
	mp := opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	c := &collector{src: src, keys: slices.Clone(opts.Keys)}
	c.attributes(opts.Name)
	meter := mp.Meter(ScopeName)
	instruments, err := c.instruments(meter)
	if err != nil {
		return nil, err
	}
	return meter.RegisterCallback(c.observe, instruments...)
}

// checkOptions returns an error wrapping ErrInvalidOptions if opts are
// invalid.
func checkOptions(opts Options) error {
	if !utf8.ValidString(opts.Name) {
		return fmt.Errorf("%w: Name %q is not UTF-8", ErrInvalidOptions, opts.Name)
	}
	if len(opts.Keys) > MaxKeys {
		return fmt.Errorf("%w: %d Keys, more than MaxKeys (%d)", ErrInvalidOptions, len(opts.Keys), MaxKeys)
	}
	seen := make(map[string]bool, len(opts.Keys))
	for _, k := range opts.Keys {
		if k == "" || !utf8.ValidString(k) {
			return fmt.Errorf("%w: key %q is empty or not UTF-8", ErrInvalidOptions, k)
		}
		if seen[k] {
			return fmt.Errorf("%w: key %q given twice", ErrInvalidOptions, k)
		}
		seen[k] = true
	}
	return nil
}

// Outcomes of a job, in the order of outcomeNames.
const (
	succeeded = iota
	failed
	cancelled
	retryAfter // a run's only
)

var outcomeNames = [...]string{"succeeded", "failed", "cancelled", "retry_after"}

// A collector observes one Source's figures. Its attribute sets are made
// once, so that an observation allocates nothing.
type collector struct {
	src  Source
	keys []string

	plain    []metric.ObserveOption    // the dispatcher's name, if any
	outcomes [3][]metric.ObserveOption // and each job outcome
	results  [4][]metric.ObserveOption // and each admission result
	perKey   []keyAttributes           // by Options.Keys

	submitted, completed, retried, requeued metric.Int64ObservableCounter
	admissions, roundTrips, backendErrors   metric.Int64ObservableCounter
	leasesLost, learned                     metric.Int64ObservableCounter
	roundTripTime                           metric.Float64ObservableCounter
	keyInterval                             metric.Float64ObservableGauge
	queued, waiting, running                metric.Int64ObservableUpDownCounter
	keySubmitted, keyCompleted, keyRetried  metric.Int64ObservableCounter
	keyThrottled, keyLate                   metric.Int64ObservableCounter
}

// keyAttributes are one key's attribute sets.
type keyAttributes struct {
	plain    []metric.ObserveOption
	outcomes [3][]metric.ObserveOption
}

// attributes makes c's attribute sets, with name as the dispatcher's if
// it is not empty.
func (c *collector) attributes(name string) {
	var base []attribute.KeyValue
	if name != "" {
		base = append(base, DispatcherNameKey.String(name))
	}
	// One slice each: an observation passes it without allocating.
	with := func(kvs ...attribute.KeyValue) []metric.ObserveOption {
		return []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(base), kvs...)...))}
	}
	c.plain = with()
	for o := range c.outcomes {
		c.outcomes[o] = with(OutcomeKey.String(outcomeNames[o]))
	}
	for r, result := range []string{"admitted", "throttled", "paused", "at_cap"} {
		c.results[r] = with(AdmissionResultKey.String(result))
	}
	c.perKey = make([]keyAttributes, len(c.keys))
	for i, k := range c.keys {
		c.perKey[i].plain = with(KeyKey.String(k))
		for o := range c.perKey[i].outcomes {
			c.perKey[i].outcomes[o] = with(KeyKey.String(k), OutcomeKey.String(outcomeNames[o]))
		}
	}
}

// instruments creates c's instruments on meter (a meter returns the same
// instrument for the same name, unit and description, so several
// dispatchers share them) and returns them for the callback.
func (c *collector) instruments(meter metric.Meter) ([]metric.Observable, error) {
	var (
		errs []error
		all  []metric.Observable
	)
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		i, err := meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		all = append(all, i)
		return i
	}
	upDown := func(name, unit, desc string) metric.Int64ObservableUpDownCounter {
		i, err := meter.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		all = append(all, i)
		return i
	}
	c.submitted = counter("leakybucket.submitted_jobs", "{job}", "Jobs accepted by Submit.")
	c.completed = counter("leakybucket.completed_jobs", "{job}", "Jobs resolved, by outcome: succeeded, failed (the handler returned an error or panicked, or the job's limit can never admit it) or cancelled (before it started).")
	c.queued = upDown("leakybucket.queued_jobs", "{job}", "Jobs accepted and not started, including those waiting.")
	c.waiting = upDown("leakybucket.waiting_jobs", "{job}", "Queued jobs of keys their bucket holds back right now: throttled, paused or booked ahead.")
	c.running = upDown("leakybucket.running_jobs", "{job}", "Handlers running.")
	c.retried = counter("leakybucket.job.retries", "{retry}", "Times a job was queued again after its handler asked for a retry-after.")
	c.requeued = counter("leakybucket.job.requeues", "{requeue}", "Times an admitted job went back to its key's queue to be admitted again: it reached its worker late or behind its key, or it was booked ahead when that happened or a retry-after paused the key.")
	c.admissions = counter("leakybucket.admissions", "{admission}", "Admissions the backend decided, by result: admitted, throttled (refused until the key's next slot), paused (given back because a retry-after paused the key meanwhile) or at_cap (refused because the key's leases for work in flight were all held).")
	c.roundTrips = counter("leakybucket.backend.round_trips", "{round_trip}", "Admission batches sent to the backend, failed ones included.")
	roundTripTime, err := meter.Float64ObservableCounter("leakybucket.backend.round_trip.time", metric.WithUnit("s"),
		metric.WithDescription("Time the backend took to decide the admission batches counted by leakybucket.backend.round_trips."))
	errs = append(errs, err)
	all = append(all, roundTripTime)
	c.roundTripTime = roundTripTime
	c.backendErrors = counter("leakybucket.backend.errors", "{error}", "Admissions the backend failed to decide (tried again later).")
	c.leasesLost = counter("leakybucket.leases_lost", "{lease}", "Leases of running handlers a renewal found gone: another holder may have taken the place.")
	c.learned = counter("leakybucket.learned", "{report}", "Reports of what a service said of its limit that keys of learned limits took from their handlers.")
	if len(c.keys) > 0 {
		c.keySubmitted = counter("leakybucket.per_key.submitted_jobs", "{job}", "A key's jobs accepted by Submit, for the keys configured.")
		c.keyCompleted = counter("leakybucket.per_key.completed_jobs", "{job}", "A key's jobs resolved, by outcome, for the keys configured.")
		c.keyRetried = counter("leakybucket.per_key.job.retries", "{retry}", "Times a key's job was queued again after a retry-after, for the keys configured.")
		c.keyThrottled = counter("leakybucket.per_key.throttled_admissions", "{admission}", "A key's admissions its bucket refused, for the keys configured.")
		c.keyLate = counter("leakybucket.per_key.late_admissions", "{admission}", "A key's admissions given back because the job reached its worker late, for the keys configured.")
		keyInterval, err := meter.Float64ObservableGauge("leakybucket.per_key.interval", metric.WithUnit("s"),
			metric.WithDescription("The emission interval a key's bucket applied at its latest admission or report: its limit's own, or the slower one it learned; for the keys configured, once they have one."))
		errs = append(errs, err)
		all = append(all, keyInterval)
		c.keyInterval = keyInterval
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("otel: creating instruments: %w", err)
	}
	return all, nil
}

// observe reads the dispatcher's figures and observes them.
func (c *collector) observe(_ context.Context, o metric.Observer) error {
	st, rt := c.src.Stats(), c.src.Histograms().RoundTrip
	o.ObserveInt64(c.submitted, st.Submitted, c.plain...)
	for oc, n := range [...]int64{succeeded: st.Succeeded, failed: st.Failed, cancelled: st.Cancelled} {
		o.ObserveInt64(c.completed, n, c.outcomes[oc]...)
	}
	o.ObserveInt64(c.queued, st.Queued, c.plain...)
	o.ObserveInt64(c.waiting, st.Waiting, c.plain...)
	o.ObserveInt64(c.running, st.Running, c.plain...)
	o.ObserveInt64(c.retried, st.Retried, c.plain...)
	o.ObserveInt64(c.requeued, st.Requeued, c.plain...)
	for r, n := range [...]int64{st.Admitted, st.Throttled, st.Paused, st.AtCap} {
		o.ObserveInt64(c.admissions, n, c.results[r]...)
	}
	o.ObserveInt64(c.roundTrips, rt.Count, c.plain...)
	o.ObserveFloat64(c.roundTripTime, rt.Sum.Seconds(), c.plain...)
	o.ObserveInt64(c.backendErrors, st.BackendErrors, c.plain...)
	o.ObserveInt64(c.leasesLost, st.LeasesLost, c.plain...)
	o.ObserveInt64(c.learned, st.Learned, c.plain...)

	for i, key := range c.keys {
		ks, ok := c.src.KeyStats(key)
		if !ok {
			continue
		}
		a := &c.perKey[i]
		o.ObserveInt64(c.keySubmitted, ks.Submitted, a.plain...)
		for oc, n := range [...]int64{succeeded: ks.Succeeded, failed: ks.Failed, cancelled: ks.Cancelled} {
			o.ObserveInt64(c.keyCompleted, n, a.outcomes[oc]...)
		}
		o.ObserveInt64(c.keyRetried, ks.Retried, a.plain...)
		o.ObserveInt64(c.keyThrottled, ks.Throttled, a.plain...)
		o.ObserveInt64(c.keyLate, ks.Late, a.plain...)
		if ks.Interval > 0 {
			o.ObserveFloat64(c.keyInterval, ks.Interval.Seconds(), a.plain...)
		}
	}
	return nil
}
