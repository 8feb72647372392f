package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	lbotel "github.com/leakybucket/leakybucket/exporters/otel"
	lbprom "github.com/leakybucket/leakybucket/exporters/prometheus"
)

// exporterRun is how long a run of exporterOverhead lasts, so that
// several collections fall within each.
const exporterRun = 2 * time.Second

// An exporter attaches to a Dispatcher for one run: it returns a
// collection of the Dispatcher's metrics, which the run makes at its
// start and every second after, and what ends the exporter.
type exporter func(d *dispatcher.Dispatcher[int, int]) (collect, stop func())

// exporterOverhead measures what an exporter costs the Dispatcher (issue
// 18): jobs/s through a memstore limiter with 1,000 keys, as
// dispatcher/limiter=memstore/keys=1000, with and without the exporter
// attached and collected from at the run's start and every second after.
func exporterOverhead(name, how string, attach exporter) func(r *reporter) {
	return func(r *reporter) {
		ks := keys(1000)
		lim, store := newMemLimiter(open)
		defer store.Close()
		var collections atomic.Int64
		res := repeat(r.reps,
			calibrated("ours", 20_000, exporterRun, func(n int) sample { return poolRun(n, func(n int) int { return runOurs(n, lim, ks) }) }),
			calibrated("exported", 20_000, exporterRun, func(n int) sample {
				return poolRun(n, func(n int) int { return runExported(n, lim, ks, attach, &collections) })
			}),
		)
		m := metricSpec{key: "jobs/s", label: "throughput", unit: "jobs/s", better: "higher",
			target: &target{"≥ 0.95× without", nil},
			note:   how + " at each run's start and every second; runs of about 2s"}
		r.compareTarget(m, "Dispatcher + memstore + "+name, res["exported"], "Dispatcher + memstore", res["ours"], 0.95)
		if collections.Load() == 0 {
			panic("benchmarks: exporter: no collection happened")
		}
	}
}

// runExported is runOurs with an exporter attached to the Dispatcher and
// collected from every second while the jobs run, collections counting
// the collections.
func runExported(n int, lim *bucket.Limiter, ks []string, attach exporter, collections *atomic.Int64) int {
	res := results
	h := func(_ context.Context, i int) (int, error) { res[i] = i; return i, nil }
	d, err := dispatcher.New(h, func(i int) string { return ks[i%len(ks)] },
		dispatcher.WithWorkers(poolWorkers), dispatcher.WithLimiter(lim))
	if err != nil {
		panic(err)
	}
	collect, stopExporter := attach(d)
	defer stopExporter()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			collect()
			collections.Add(1)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	done := feed(d, n, time.Now().Add(maxRun), 0, 1)
	close(stop)
	wg.Wait()
	return done
}

// prometheusExporter registers a Collector of the Dispatcher, scraped by
// an HTTP client through promhttp.
func prometheusExporter(d *dispatcher.Dispatcher[int, int]) (collect, stop func()) {
	c, err := lbprom.NewCollector(d, lbprom.Options{Name: "bench"})
	if err != nil {
		panic(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return func() { scrape(srv.URL) }, srv.Close
}

func scrape(url string) {
	resp, err := http.Get(url)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		panic("benchmarks: scrape failed: " + resp.Status)
	}
}

// otelExporter registers the Dispatcher's OpenTelemetry metrics on an SDK
// MeterProvider, collected by a ManualReader.
func otelExporter(d *dispatcher.Dispatcher[int, int]) (collect, stop func()) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	reg, err := lbotel.RegisterMetrics(d, lbotel.Options{MeterProvider: mp, Name: "bench"})
	if err != nil {
		panic(err)
	}
	var rm metricdata.ResourceMetrics
	collect = func() {
		if err := reader.Collect(context.Background(), &rm); err != nil {
			panic(err)
		}
		if len(rm.ScopeMetrics) == 0 {
			panic("benchmarks: the OpenTelemetry collection has no metrics")
		}
	}
	return collect, func() {
		if err := reg.Unregister(); err != nil {
			panic(err)
		}
		if err := mp.Shutdown(context.Background()); err != nil {
			panic(err)
		}
	}
}
