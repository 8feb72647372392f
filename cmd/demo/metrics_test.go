package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMetrics: with -metrics, each process running a dispatcher serves its
// figures in Prometheus's text format while the demo runs (worker i on the
// port + i), per tenant too, and nothing once the demo has exited.
func TestMetrics(t *testing.T) {
	for _, procs := range []int{1, 2} {
		t.Run("procs="+strconv.Itoa(procs), func(t *testing.T) {
			port := freePorts(t, procs)
			args := []string{"-jobs", "60", "-rate", "20", "-json", "-metrics", "127.0.0.1:" + strconv.Itoa(port)}
			if procs > 1 {
				args = append(args, "-backend", "sqlite", "-sqlite", filepath.Join(t.TempDir(), "b.db"), "-procs", strconv.Itoa(procs))
			}
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, demoBin, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			require.NoError(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()

			// Scrape every process until each has answered, or the demo ends.
			scraped := make(map[int]map[string]*family)
		poll:
			for len(scraped) < procs {
				for i := range procs {
					if _, ok := scraped[i]; !ok {
						if fams, ok := scrape(t, port+i); ok {
							scraped[i] = fams
						}
					}
				}
				select {
				case err := <-exited:
					exited <- err
					break poll
				case <-time.After(20 * time.Millisecond): // the demo takes seconds to sync
				}
			}
			require.NoError(t, <-exited, "demo %v\nstderr: %s", args, stderr.String())
			require.Len(t, scraped, procs, "processes scraped while the demo ran")

			var submitted float64
			for i, fams := range scraped {
				f := fams["leakybucket_jobs_submitted_total"]
				require.NotNil(t, f, "process %d: leakybucket_jobs_submitted_total", i)
				assert.Equal(t, "demo", f.label("dispatcher"), "process %d: the dispatcher label", i)
				submitted += f.value
				keys := fams["leakybucket_key_jobs_submitted_total"]
				require.NotNil(t, keys, "process %d: leakybucket_key_jobs_submitted_total", i)
				assert.ElementsMatch(t, []string{"tenant-1", "tenant-2", "tenant-3", "tenant-4"}, keys.labels("key"), "process %d: per-tenant series", i)
				assert.NotNil(t, fams["go_goroutines"], "process %d: the Go runtime's metrics", i)
			}
			assert.Positive(t, submitted, "jobs submitted, summed over the processes")
			for i := range procs {
				_, ok := scrape(t, port+i)
				assert.False(t, ok, "process %d's port answered after the demo exited", i)
			}
		})
	}
}

// freePorts returns the first of n consecutive loopback ports free now.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		free := port+n-1 <= 65535
		for i := 1; i < n && free; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+i))
			if free = err == nil; free {
				l.Close()
			}
		}
		if free {
			return port
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

// A family is what the test reads of one metric family: its series'
// labels, and the first series' value.
type family struct {
	series []model.LabelSet
	value  float64
}

func (f *family) label(name string) string { return string(f.series[0][model.LabelName(name)]) }

func (f *family) labels(name string) []string {
	var vs []string
	for _, s := range f.series {
		vs = append(vs, string(s[model.LabelName(name)]))
	}
	return vs
}

// scrape GETs /metrics on port and parses it with Prometheus's own text
// parser; false if nothing answered.
func scrape(t *testing.T, port int) (map[string]*family, bool) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err, "parsing the scrape")
	out := make(map[string]*family)
	for name, mf := range fams {
		f := new(family)
		for _, m := range mf.GetMetric() {
			ls := model.LabelSet{}
			for _, lp := range m.GetLabel() {
				ls[model.LabelName(lp.GetName())] = model.LabelValue(lp.GetValue())
			}
			f.series = append(f.series, ls)
		}
		if ms := mf.GetMetric(); len(ms) > 0 {
			switch {
			case ms[0].GetCounter() != nil:
				f.value = ms[0].GetCounter().GetValue()
			case ms[0].GetGauge() != nil:
				f.value = ms[0].GetGauge().GetValue()
			}
		}
		out[name] = f
	}
	return out, true
}
