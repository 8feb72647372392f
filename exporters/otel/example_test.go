package otel_test

import (
	"context"
	"fmt"
	"log"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	lbotel "github.com/leakybucket/leakybucket/exporters/otel"
)

// Register a Dispatcher's metrics on a MeterProvider, with the figures of
// one key (kept by WithKeyStats, for the keys a limiter admits). A
// ManualReader stands in for the
// exporter an application would give its MeterProvider (an OTLP
// exporter's PeriodicReader, or the Prometheus exporter's reader).
func ExampleRegisterMetrics() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	store, err := memstore.New(memstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(100))
	if err != nil {
		log.Fatal(err)
	}
	fetch := func(_ context.Context, url string) (int, error) { return len(url), nil }
	tenant := func(url string) string { return "tenant-1" }
	d, err := dispatcher.New(fetch, tenant, dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(100))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	reg, err := lbotel.RegisterMetrics(d, lbotel.Options{MeterProvider: mp, Name: "fetch", Keys: []string{"tenant-1"}})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Unregister()

	for _, url := range []string{"https://example.com/a", "https://example.com/b"} {
		if _, err := d.Do(context.Background(), url); err != nil {
			log.Fatal(err)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "leakybucket.submitted_jobs" || m.Name == "leakybucket.per_key.submitted_jobs" {
			p := m.Data.(metricdata.Sum[int64]).DataPoints[0]
			fmt.Println(m.Name, m.Unit, p.Attributes.Encoded(attribute.DefaultEncoder()), p.Value)
		}
	}
	// Output:
	// leakybucket.submitted_jobs {job} leakybucket.dispatcher.name=fetch 2
	// leakybucket.per_key.submitted_jobs {job} leakybucket.dispatcher.name=fetch,leakybucket.key=tenant-1 2
}

// Trace each run of a handler: its span is a child of the span in the
// context given to Submit, and what the handler calls with its context is
// a child of the run's span.
func ExampleMiddleware() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	mp := sdkmetric.NewMeterProvider()
	defer mp.Shutdown(context.Background())

	fetch := func(_ context.Context, url string) (int, error) { return len(url), nil }
	traced := lbotel.Middleware[string, int](lbotel.MiddlewareOptions{TracerProvider: tp, MeterProvider: mp})(fetch)
	d, err := dispatcher.New(traced, func(url string) string { return "example.com" })
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	ctx, request := tp.Tracer("example").Start(context.Background(), "request")
	if _, err := d.Do(ctx, "https://example.com/a"); err != nil {
		log.Fatal(err)
	}
	request.End()

	run := spans.Ended()[0]
	fmt.Println(run.Name(), run.SpanKind())
	fmt.Println("parent is the request's span:", run.Parent().SpanID() == request.SpanContext().SpanID())
	for _, kv := range run.Attributes() {
		if kv.Key != lbotel.WaitKey {
			fmt.Println(kv.Key, kv.Value.Emit())
		}
	}
	// Output:
	// leakybucket.job consumer
	// parent is the request's span: true
	// leakybucket.key example.com
	// leakybucket.job.attempt 1
	// leakybucket.job.outcome succeeded
}
