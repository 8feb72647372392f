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

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	lbprom "github.com/leakybucket/leakybucket/exporters/prometheus"
)

// exporterRun is how long a run of exporterOverhead lasts, so that
// several scrapes fall within each.
const exporterRun = 2 * time.Second

// exporterOverhead measures what the Prometheus exporter costs the
// Dispatcher (issue 18): jobs/s through a memstore limiter with 1,000
// keys, as dispatcher/limiter=memstore/keys=1000, with and without a
// Collector that an HTTP client scrapes through promhttp at the run's
// start and every second after.
func exporterOverhead(r *reporter) {
	ks := keys(1000)
	lim, store := newMemLimiter(open)
	defer store.Close()
	var scrapes atomic.Int64
	res := repeat(r.reps,
		calibrated("ours", 20_000, exporterRun, func(n int) sample { return poolRun(n, func(n int) int { return runOurs(n, lim, ks) }) }),
		calibrated("exported", 20_000, exporterRun, func(n int) sample {
			return poolRun(n, func(n int) int { return runExported(n, lim, ks, &scrapes) })
		}),
	)
	m := metricSpec{key: "jobs/s", label: "throughput", unit: "jobs/s", better: "higher",
		target: &target{"≥ 0.95× without", nil},
		note:   "a scrape through promhttp at each run's start and every second; runs of about 2s"}
	r.compareTarget(m, "Dispatcher + memstore + Prometheus exporter", res["exported"], "Dispatcher + memstore", res["ours"], 0.95)
	if scrapes.Load() == 0 {
		panic("benchmarks: exporter: no scrape happened")
	}
}

// runExported is runOurs with a Collector of the Dispatcher registered
// and scraped over HTTP every second while the jobs run, scrapes counting
// the scrapes.
func runExported(n int, lim *bucket.Limiter, ks []string, scrapes *atomic.Int64) int {
	res := results
	h := func(_ context.Context, i int) (int, error) { res[i] = i; return i, nil }
	d, err := dispatcher.New(h, func(i int) string { return ks[i%len(ks)] },
		dispatcher.WithWorkers(poolWorkers), dispatcher.WithLimiter(lim))
	if err != nil {
		panic(err)
	}
	c, err := lbprom.NewCollector(d, lbprom.Options{Name: "bench"})
	if err != nil {
		panic(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			scrape(srv.URL)
			scrapes.Add(1)
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
