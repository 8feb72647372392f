package otel

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/middleware"
)

// SpanName is the name of the span Middleware starts for each run. It is
// the same for every job, as a span name should be of low cardinality:
// the key is an attribute.
const SpanName = "leakybucket.job"

// Span attribute keys besides KeyKey, OutcomeKey and DispatcherNameKey.
const (
	// AttemptKey is the run's attempt (jobinfo.Info.Attempt): 1, plus one
	// for each retry-after before it.
	AttemptKey = attribute.Key("leakybucket.job.attempt")
	// WaitKey is the time in seconds the job waited for the run, from
	// Submit or from the retry-after that put it back (jobinfo.Info.Waited).
	WaitKey = attribute.Key("leakybucket.job.wait")
	// RetryAfterKey is the delay in seconds the run's error asked for,
	// when it has a RetryAfter method.
	RetryAfterKey = attribute.Key("leakybucket.job.retry_after")
)

// Bucket boundaries, in seconds, advised to the SDK for Middleware's
// histograms; a View may change them.
var (
	// TimeInQueueBuckets are leakybucket.job.time_in_queue's: from a
	// millisecond to an hour, as a rate limit can hold jobs back for
	// minutes.
	TimeInQueueBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
	// ProcessDurationBuckets are leakybucket.job.process.duration's: the
	// semantic conventions' for messaging.process.duration.
	ProcessDurationBuckets = []float64{.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10}
)

// MiddlewareOptions configure Middleware. The zero value is valid: the
// global providers, each run's span a child of the submitter's.
type MiddlewareOptions struct {
	// TracerProvider starts the spans. Default (nil): the global one,
	// otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// MeterProvider makes the histograms. Default (nil): the global one,
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Name, if not empty, is the value of leakybucket.dispatcher.name on
	// the spans and the histograms' data points.
	Name string
	// NewRoot starts each run's span as the root of a trace of its own,
	// linked to the span in the handler's context (the submitter's),
	// instead of as that span's child: as otelhttp's WithPublicEndpoint,
	// for jobs that outlive what submitted them or whose submitters' traces
	// should not grow by a span per job. Default: a child, so that a
	// job's run shows in the trace of the request that submitted it.
	NewRoot bool
}

// Middleware returns a handler middleware that traces and measures each
// run of the handler it wraps: a span named SpanName, of kind Consumer,
// around the run, and two histograms, leakybucket.job.time_in_queue (the
// job's wait for the run, jobinfo.Info.Waited) and
// leakybucket.job.process.duration (the run), both in seconds with the
// attribute leakybucket.job.outcome: succeeded, failed, or retry_after
// (the error has a RetryAfter method: a dispatcher will run the job
// again). The handler's context carries the span, so the spans of what
// the handler calls are its children.
//
// A dispatcher's handler context carries the values of the context given
// to Submit, so the span is a child of the submitter's span (or, with
// NewRoot, linked to it). Its attributes: leakybucket.key,
// leakybucket.job.attempt and leakybucket.job.wait from the context's
// jobinfo (absent where a call has none, and then no time_in_queue is
// recorded), leakybucket.job.outcome, and leakybucket.job.retry_after when
// the error asks for one. A run that returns an error ends its span with
// status Error and the error recorded. A handler that panics ends its span
// the same way, with a *dispatcher.PanicError (the error the dispatcher
// resolves the job with), and the panic goes on to the caller unchanged.
//
// The span measures the run, not the wait: it starts when the run does,
// and the wait is an attribute. Put Middleware outermost to trace the
// whole of a run, retries of middleware.Retry included:
// Middleware[T, R](opts)(middleware.Wrap(h, retry, timeout)).
//
// Costs, per run, with the SDK on a 2-core machine (BenchmarkMiddleware):
// about 2.5µs and 10 allocations when the span is sampled and batched to
// an exporter, 0.9µs and 6 allocations when the sampler drops it (the
// histograms' records are most of that); with no-op providers, 0.4µs and
// 4 allocations. A histogram that the MeterProvider refuses is reported
// to otel.Handle and not recorded. The handler returned is safe for
// concurrent use when h is. Middleware panics if opts.Name is not UTF-8,
// and the function it returns if given a nil handler, as the middleware
// package's constructors do on a programming error.
func Middleware[T, R any](opts MiddlewareOptions) func(dispatcher.Handler[T, R]) dispatcher.Handler[T, R] {
	if !utf8.ValidString(opts.Name) {
		panic(fmt.Sprintf("otel: Middleware: Name %q is not UTF-8", opts.Name))
	}
	rs := newRuns(opts)
	return func(h dispatcher.Handler[T, R]) dispatcher.Handler[T, R] {
		if h == nil {
			panic("otel: Middleware: nil handler")
		}
		return func(ctx context.Context, job T) (_ R, err error) {
			ctx, r := rs.start(ctx)
			defer func() {
				if v := recover(); v != nil {
					rs.end(ctx, r, &dispatcher.PanicError{Value: v, Stack: debug.Stack()}, failed)
					panic(v)
				}
				rs.end(ctx, r, err, outcomeOf(err))
			}()
			return h(ctx, job)
		}
	}
}

// runs are what Middleware's runs share: the tracer, the histograms and
// their attribute sets by outcome.
type runs struct {
	tracer      trace.Tracer
	newRoot     bool
	name        []attribute.KeyValue // the dispatcher's name, if any
	timeInQueue metric.Float64Histogram
	process     metric.Float64Histogram
	consumer    trace.SpanStartOption
	outcomes    [len(outcomeNames)][]metric.RecordOption // one slice each: a call passes it without allocating
}

// A run is one run's span, start and jobinfo.
type run struct {
	span  trace.Span
	start time.Time
	info  jobinfo.Info
	known bool // info came from the context
}

func newRuns(opts MiddlewareOptions) *runs {
	tp, mp := opts.TracerProvider, opts.MeterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	rs := &runs{tracer: tp.Tracer(ScopeName), newRoot: opts.NewRoot, consumer: trace.WithSpanKind(trace.SpanKindConsumer)}
	if opts.Name != "" {
		rs.name = []attribute.KeyValue{DispatcherNameKey.String(opts.Name)}
	}
	for o, name := range outcomeNames {
		set := attribute.NewSet(append(rs.name[:len(rs.name):len(rs.name)], OutcomeKey.String(name))...)
		rs.outcomes[o] = []metric.RecordOption{metric.WithAttributeSet(set)}
	}
	meter := mp.Meter(ScopeName)
	rs.timeInQueue = histogram(meter, "leakybucket.job.time_in_queue", TimeInQueueBuckets,
		"Time a job waited for a run: from Submit, or from the retry-after that put it back, to the run's start.")
	rs.process = histogram(meter, "leakybucket.job.process.duration", ProcessDurationBuckets,
		"Duration of a run of a job's handler.")
	return rs
}

// histogram returns meter's histogram of seconds name, or a no-op one
// if meter refuses it, after reporting the error to otel.Handle.
func histogram(meter metric.Meter, name string, bounds []float64, desc string) metric.Float64Histogram {
	h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
		metric.WithExplicitBucketBoundaries(bounds...))
	if err != nil {
		otel.Handle(fmt.Errorf("otel: %s: %w", name, err))
		return noop.Float64Histogram{}
	}
	return h
}

// start starts a run's span, and returns the context that carries it.
func (rs *runs) start(ctx context.Context) (context.Context, run) {
	r := run{start: time.Now()}
	r.info, r.known = jobinfo.FromContext(ctx)
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, rs.name...)
	if r.known {
		attrs = append(attrs, KeyKey.String(r.info.Key), AttemptKey.Int(r.info.Attempt), WaitKey.Float64(r.info.Waited.Seconds()))
	}
	opts := []trace.SpanStartOption{rs.consumer, trace.WithAttributes(attrs...)}
	if rs.newRoot {
		opts = append(opts, trace.WithNewRoot())
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
	}
	ctx, r.span = rs.tracer.Start(ctx, SpanName, opts...)
	return ctx, r
}

// end ends r's span with err and outcome o, and records its histograms.
func (rs *runs) end(ctx context.Context, r run, err error, o int) {
	rs.process.Record(ctx, time.Since(r.start).Seconds(), rs.outcomes[o]...)
	if r.known {
		rs.timeInQueue.Record(ctx, r.info.Waited.Seconds(), rs.outcomes[o]...)
	}
	if !r.span.IsRecording() {
		r.span.End()
		return
	}
	r.span.SetAttributes(OutcomeKey.String(outcomeNames[o]))
	if err != nil {
		if d, ok := middleware.RetryAfter(err); ok {
			r.span.SetAttributes(RetryAfterKey.Float64(d.Seconds()))
		}
		r.span.RecordError(err)
		desc := err.Error()
		var pe *dispatcher.PanicError
		if errors.As(err, &pe) {
			desc = fmt.Sprintf("handler panicked: %v", pe.Value) // without the stack
		}
		r.span.SetStatus(codes.Error, desc)
	}
	r.span.End()
}

// outcomeOf returns the outcome of a run that returned err.
func outcomeOf(err error) int {
	if err == nil {
		return succeeded
	}
	if _, ok := middleware.RetryAfter(err); ok {
		return retryAfter
	}
	return failed
}
