package otel_test

import (
	"context"
	"errors"
	"sort"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/leakybucket/leakybucket/dispatcher"
	lbotel "github.com/leakybucket/leakybucket/exporters/otel"
	"github.com/leakybucket/leakybucket/jobinfo"
	"github.com/leakybucket/leakybucket/middleware"
)

// telemetry is a TracerProvider that records the spans ended, and a
// MeterProvider whose metrics a ManualReader collects.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
}

func newTelemetry(t *testing.T) *telemetry {
	t.Helper()
	tel := &telemetry{spans: tracetest.NewSpanRecorder()}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	t.Cleanup(func() { assert.NoError(t, tel.tp.Shutdown(context.Background())) })
	tel.mp, tel.reader = newMeterProvider(t)
	return tel
}

func (tel *telemetry) options(name string, newRoot bool) lbotel.MiddlewareOptions {
	return lbotel.MiddlewareOptions{TracerProvider: tel.tp, MeterProvider: tel.mp, Name: name, NewRoot: newRoot}
}

// runSpans returns the spans Middleware ended, in the order they started.
func (tel *telemetry) runSpans() []sdktrace.ReadOnlySpan {
	var runs []sdktrace.ReadOnlySpan
	for _, s := range tel.spans.Ended() {
		if s.Name() == lbotel.SpanName {
			runs = append(runs, s)
		}
	}
	sort.SliceStable(runs, func(i, j int) bool { return runs[i].StartTime().Before(runs[j].StartTime()) })
	return runs
}

// histogram returns the data point of histogram name whose attributes are
// attrs.
func histogram(t *testing.T, ms map[string]metricdata.Metrics, name string, attrs ...attribute.KeyValue) metricdata.HistogramDataPoint[float64] {
	t.Helper()
	m, ok := ms[name]
	require.True(t, ok, "no histogram %s", name)
	h, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s is a %T", name, m.Data)
	want := attribute.NewSet(attrs...)
	for _, p := range h.DataPoints {
		if p.Attributes.Equals(&want) {
			return p
		}
	}
	t.Fatalf("no data point of %s with %v", name, attrs)
	return metricdata.HistogramDataPoint[float64]{}
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// TestMiddlewareSpans runs three jobs of key a (10/s) through a real
// Dispatcher, each 50ms long, from a submitter's span: the first
// succeeds, the second fails, the third asks for a retry-after of a
// second once, then succeeds. Each run has a span, a child of the
// submitter's and the parent of the handler's own, with the run's key,
// attempt, wait and outcome; the histograms count each run by outcome,
// with the waits and durations the fake clock gives.
func TestMiddlewareSpans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		var asked atomic.Bool
		tracer := tel.tp.Tracer("test")
		h := func(ctx context.Context, j job) (int, error) {
			_, span := tracer.Start(ctx, "fetch")
			defer span.End()
			time.Sleep(50 * time.Millisecond)
			switch {
			case j.n == 2:
				return 0, errors.New("failed")
			case j.n == 3 && !asked.Swap(true):
				return 0, &middleware.RetryAfterError{Delay: time.Second}
			}
			return j.n, nil
		}
		d := newDispatcher(t, lbotel.Middleware[job, int](tel.options("fetch", false))(h),
			dispatcher.WithWorkers(4), dispatcher.WithLimiter(newLimiter(t)))
		ctx, submit := tel.tp.Tracer("test").Start(context.Background(), "submit")
		results := d.DoAll(ctx, []job{{"a", 1}, {"a", 2}, {"a", 3}})
		submit.End()
		require.NoError(t, results[0].Err)
		require.Error(t, results[1].Err)
		require.NoError(t, results[2].Err)

		runs := tel.runSpans()
		require.Len(t, runs, 4)
		fetches := map[trace.SpanID]sdktrace.ReadOnlySpan{}
		for _, s := range tel.spans.Ended() {
			if s.Name() == "fetch" {
				fetches[s.Parent().SpanID()] = s
			}
		}
		second := time.Second.Seconds()
		for i, want := range []struct {
			attempt    int64
			wait       float64
			outcome    string
			status     codes.Code
			retryAfter float64
		}{
			{1, 0, "succeeded", codes.Unset, 0},
			{1, 0.1, "failed", codes.Error, 0},
			{1, 0.2, "retry_after", codes.Error, second},
			// Put back at 250ms; the pause ends at 1.25s.
			{2, second, "succeeded", codes.Unset, 0},
		} {
			s := runs[i]
			assert.Equal(t, trace.SpanKindConsumer, s.SpanKind(), "run %d", i)
			assert.Equal(t, submit.SpanContext().TraceID(), s.SpanContext().TraceID(), "run %d's trace", i)
			assert.Equal(t, submit.SpanContext().SpanID(), s.Parent().SpanID(), "run %d's parent", i)
			assert.Empty(t, s.Links(), "run %d's links", i)
			a := attrs(s)
			assert.Equal(t, "a", a[lbotel.KeyKey].AsString(), "run %d's key", i)
			assert.Equal(t, "fetch", a[lbotel.DispatcherNameKey].AsString(), "run %d's dispatcher", i)
			assert.Equal(t, want.attempt, a[lbotel.AttemptKey].AsInt64(), "run %d's attempt", i)
			assert.InDelta(t, want.wait, a[lbotel.WaitKey].AsFloat64(), 1e-9, "run %d's wait", i)
			assert.Equal(t, want.outcome, a[lbotel.OutcomeKey].AsString(), "run %d's outcome", i)
			assert.InDelta(t, want.retryAfter, a[lbotel.RetryAfterKey].AsFloat64(), 1e-9, "run %d's retry-after", i)
			assert.Equal(t, want.status, s.Status().Code, "run %d's status", i)
			assert.Equal(t, 50*time.Millisecond, s.EndTime().Sub(s.StartTime()), "run %d's duration", i)
			if want.status == codes.Error {
				require.Len(t, s.Events(), 1, "run %d's events", i)
				assert.Equal(t, "exception", s.Events()[0].Name)
			}
			fetch, ok := fetches[s.SpanContext().SpanID()]
			if assert.True(t, ok, "run %d's handler span", i) {
				assert.Equal(t, s.SpanContext().TraceID(), fetch.SpanContext().TraceID())
			}
		}

		ms := collect(t, tel.reader)
		name := lbotel.DispatcherNameKey.String("fetch")
		for outcome, want := range map[string]struct {
			runs  uint64
			waits float64
		}{
			"succeeded":   {2, 0 + second},
			"failed":      {1, 0.1},
			"retry_after": {1, 0.2},
		} {
			o := lbotel.OutcomeKey.String(outcome)
			wait := histogram(t, ms, "leakybucket.job.time_in_queue", name, o)
			assert.Equal(t, want.runs, wait.Count, "%s runs' waits", outcome)
			assert.InDelta(t, want.waits, wait.Sum, 1e-9, "%s runs' waits", outcome)
			run := histogram(t, ms, "leakybucket.job.process.duration", name, o)
			assert.Equal(t, want.runs, run.Count, "%s runs", outcome)
			assert.InDelta(t, float64(want.runs)*0.05, run.Sum, 1e-9, "%s runs' durations", outcome)
		}
		assert.Equal(t, "s", ms["leakybucket.job.process.duration"].Unit)
		wait := histogram(t, ms, "leakybucket.job.time_in_queue", name, lbotel.OutcomeKey.String("succeeded"))
		assert.Equal(t, lbotel.TimeInQueueBuckets, wait.Bounds, "the advised bounds")
	})
}

// TestMiddlewareNewRoot: with NewRoot, a run's span starts a trace of its
// own, linked to the submitter's span.
func TestMiddlewareNewRoot(t *testing.T) {
	tel := newTelemetry(t)
	d := newDispatcher(t, lbotel.Middleware[job, int](tel.options("", true))(func(_ context.Context, j job) (int, error) { return j.n, nil }))
	ctx, submit := tel.tp.Tracer("test").Start(context.Background(), "submit")
	_, err := d.Do(ctx, job{"a", 1})
	require.NoError(t, err)
	submit.End()

	runs := tel.runSpans()
	require.Len(t, runs, 1)
	s := runs[0]
	assert.False(t, s.Parent().IsValid(), "a new root has no parent")
	assert.NotEqual(t, submit.SpanContext().TraceID(), s.SpanContext().TraceID())
	require.Len(t, s.Links(), 1)
	assert.Equal(t, submit.SpanContext(), s.Links()[0].SpanContext)
	_, named := attrs(s)[lbotel.DispatcherNameKey]
	assert.False(t, named, "a dispatcher name without Options.Name")
}

// panicky panics; TestMiddlewarePanic finds it in the panic's stack.
func panicky(context.Context, job) (int, error) { panic("boom") }

// TestMiddlewarePanic: a handler's panic ends its run's span with status
// Error and a *dispatcher.PanicError recorded, counts the run as failed,
// and goes on to the dispatcher with the handler's frames in its stack.
func TestMiddlewarePanic(t *testing.T) {
	tel := newTelemetry(t)
	d := newDispatcher(t, lbotel.Middleware[job, int](tel.options("", false))(panicky))
	_, err := d.Do(context.Background(), job{"a", 1})
	var pe *dispatcher.PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "boom", pe.Value)
	assert.Contains(t, string(pe.Stack), "otel_test.panicky", "the panic's stack")

	runs := tel.runSpans()
	require.Len(t, runs, 1)
	s := runs[0]
	assert.Equal(t, codes.Error, s.Status().Code)
	assert.Equal(t, "handler panicked: boom", s.Status().Description)
	assert.Equal(t, "failed", attrs(s)[lbotel.OutcomeKey].AsString())
	require.Len(t, s.Events(), 1)
	ev := attrsOf(s.Events()[0].Attributes)
	assert.Equal(t, "*dispatcher.PanicError", ev["exception.type"].AsString())
	assert.Contains(t, ev["exception.message"].AsString(), "otel_test.panicky", "the recorded error's stack")

	ms := collect(t, tel.reader)
	assert.EqualValues(t, 1, histogram(t, ms, "leakybucket.job.process.duration", lbotel.OutcomeKey.String("failed")).Count)
}

func attrsOf(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

// TestMiddlewareWithoutDispatcher: a handler called directly, its
// context carrying no jobinfo, has a span without the job's attributes
// and records no time in queue; with jobinfo (as middleware.Keyed gives),
// it has them.
func TestMiddlewareWithoutDispatcher(t *testing.T) {
	tel := newTelemetry(t)
	h := lbotel.Middleware[job, int](tel.options("", false))(func(_ context.Context, j job) (int, error) { return j.n, nil })
	got, err := h(context.Background(), job{"a", 7})
	require.NoError(t, err)
	assert.Equal(t, 7, got)
	runs := tel.runSpans()
	require.Len(t, runs, 1)
	a := attrs(runs[0])
	for _, k := range []attribute.Key{lbotel.KeyKey, lbotel.AttemptKey, lbotel.WaitKey} {
		assert.NotContains(t, a, k)
	}
	ms := collect(t, tel.reader)
	assert.NotContains(t, ms, "leakybucket.job.time_in_queue")
	assert.EqualValues(t, 1, histogram(t, ms, "leakybucket.job.process.duration", lbotel.OutcomeKey.String("succeeded")).Count)

	_, err = h(jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "k", Attempt: 3}), job{"k", 1})
	require.NoError(t, err)
	runs = tel.runSpans()
	require.Len(t, runs, 2)
	a = attrs(runs[1])
	assert.Equal(t, "k", a[lbotel.KeyKey].AsString())
	assert.EqualValues(t, 3, a[lbotel.AttemptKey].AsInt64())
}

// TestMiddlewareUnsampled: a span the sampler drops costs its attributes
// nothing, and the histograms still count the run.
func TestMiddlewareUnsampled(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithSampler(sdktrace.NeverSample()))
	defer tp.Shutdown(context.Background())
	mp, reader := newMeterProvider(t)
	h := lbotel.Middleware[job, int](lbotel.MiddlewareOptions{TracerProvider: tp, MeterProvider: mp})(
		func(context.Context, job) (int, error) { return 0, errors.New("failed") })
	_, err := h(context.Background(), job{})
	require.Error(t, err)
	assert.Empty(t, spans.Ended())
	ms := collect(t, reader)
	assert.EqualValues(t, 1, histogram(t, ms, "leakybucket.job.process.duration", lbotel.OutcomeKey.String("failed")).Count)
}

func TestMiddlewarePanicsOnMisuse(t *testing.T) {
	assert.PanicsWithValue(t, "otel: Middleware: nil handler", func() {
		lbotel.Middleware[job, int](lbotel.MiddlewareOptions{})(nil)
	})
	assert.PanicsWithValue(t, `otel: Middleware: Name "\xff" is not UTF-8`, func() {
		lbotel.Middleware[job, int](lbotel.MiddlewareOptions{Name: "\xff"})
	})
}

// BenchmarkMiddleware measures what Middleware adds to a run of a trivial
// handler called directly with a job's jobinfo: none; spans sampled and
// batched to an exporter that drops them; spans the sampler drops (the
// histograms on an SDK MeterProvider each time); no-op providers.
func BenchmarkMiddleware(b *testing.B) {
	h := func(_ context.Context, j job) (int, error) { return j.n, nil }
	ctx := jobinfo.NewContext(context.Background(), jobinfo.Info{Key: "a", Attempt: 1, Waited: time.Millisecond})
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	for _, bc := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{
		{"none", nil},
		{"sampled", sdktrace.AlwaysSample()},
		{"unsampled", sdktrace.NeverSample()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			wrapped := h
			if bc.sampler != nil {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(bc.sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				defer tp.Shutdown(context.Background())
				wrapped = lbotel.Middleware[job, int](lbotel.MiddlewareOptions{TracerProvider: tp, MeterProvider: mp})(h)
			}
			benchmarkHandler(b, ctx, wrapped)
		})
	}
	b.Run("noop", func(b *testing.B) {
		wrapped := lbotel.Middleware[job, int](lbotel.MiddlewareOptions{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()})(h)
		benchmarkHandler(b, ctx, wrapped)
	})
}

func benchmarkHandler(b *testing.B, ctx context.Context, h dispatcher.Handler[job, int]) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h(ctx, job{"a", 1}); err != nil {
			b.Fatal(err)
		}
	}
}
