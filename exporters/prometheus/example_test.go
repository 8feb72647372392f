package prometheus_test

import (
	"context"
	"log"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/leakybucket/leakybucket/dispatcher"
	lbprom "github.com/leakybucket/leakybucket/exporters/prometheus"
)

// Serve a Dispatcher's metrics on /metrics, with the figures of two keys
// (kept by WithKeyStats) labelled by key.
func ExampleNewCollector() {
	fetch := func(_ context.Context, url string) (int, error) { return len(url), nil }
	d, err := dispatcher.New(fetch, nil, dispatcher.WithKeyStats(100))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	c, err := lbprom.NewCollector(d, lbprom.Options{Name: "fetch", Keys: []string{"tenant-1", "tenant-2"}})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// http.ListenAndServe(":9090", nil)
}
