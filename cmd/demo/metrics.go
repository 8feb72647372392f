package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/leakybucket/leakybucket/dispatcher"
	lbprom "github.com/leakybucket/leakybucket/exporters/prometheus"
)

// With -metrics ADDR every process that runs a Dispatcher serves its
// figures on http://ADDR/metrics through the Prometheus exporter, for as
// long as the sync runs: the demo itself, or with -procs P worker i on
// ADDR's port + i, as Prometheus scrapes one target per process.

// checkMetrics checks -metrics: host:port, the port free to shift by
// -procs.
func (c *config) checkMetrics() error {
	if c.metrics == "" {
		return nil
	}
	host, port, err := splitMetricsAddr(c.metrics)
	if err != nil {
		return fmt.Errorf("-metrics %q: %v", c.metrics, err)
	}
	if c.procs > 1 && port == 0 {
		return fmt.Errorf("-metrics %q: with -procs %d, give a port: worker i serves on port+i", c.metrics, c.procs)
	}
	if last := port + c.procs - 1; c.procs > 1 && last > 65535 {
		return fmt.Errorf("-metrics %q: with -procs %d the workers would need ports up to %d", net.JoinHostPort(host, strconv.Itoa(port)), c.procs, last)
	}
	return nil
}

func splitMetricsAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, errors.New("want host:port, such as :9090 or 127.0.0.1:9090")
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want a number from 0 to 65535", p)
	}
	return host, port, nil
}

// workerMetricsAddr is where worker i serves: -metrics's port + i.
func workerMetricsAddr(cfg *config, i int) string {
	host, port, _ := splitMetricsAddr(cfg.metrics) // checked
	return net.JoinHostPort(host, strconv.Itoa(port+i))
}

// listenMetrics opens this process's -metrics listener, nil without the
// flag. It is opened before the run so that a port in use stops the demo
// before it syncs anything.
func listenMetrics(cfg *config) (net.Listener, error) {
	if cfg.metrics == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.metrics)
	if err != nil {
		return nil, fmt.Errorf("-metrics: %v", err)
	}
	return ln, nil
}

// metricsURL describes where the run's metrics are served, for the
// header: this process's listener, or the workers' range of ports.
func metricsURL(cfg *config, ln net.Listener) string {
	if ln != nil {
		return "http://" + ln.Addr().String() + "/metrics"
	}
	host, port, _ := splitMetricsAddr(cfg.metrics)
	if host == "" {
		host = "localhost"
	}
	return fmt.Sprintf("http://%s:%d…%d/metrics, worker i on port %d+i", host, port, port+cfg.procs-1, port)
}

// serveMetrics serves d's metrics on ln until the returned function is
// called, which stops the server and waits for it.
func serveMetrics(ln net.Listener, cfg *config, d *dispatcher.Dispatcher[item, struct{}]) (stop func(), err error) {
	keys := cfg.tenantNames()
	if len(keys) > lbprom.MaxKeys {
		keys = keys[:lbprom.MaxKeys]
	}
	c, err := lbprom.NewCollector(d, lbprom.Options{Name: "demo", Keys: keys})
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln) // returns ErrServerClosed once stopped
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}
