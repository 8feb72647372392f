package prometheus_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	lbprom "github.com/leakybucket/leakybucket/exporters/prometheus"
)

type job struct {
	key string
	n   int
}

// TestCollectorScrape runs 30 jobs of key "a" at 100/s and 20 of
// unlimited key "b", every tenth failing, through a real Dispatcher, then
// scrapes its Collector over HTTP, parses the text with Prometheus's own
// parser and checks the figures against what was run; promtool finds no
// problem in it.
func TestCollectorScrape(t *testing.T) {
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	defer store.Close()
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(100), bucket.WithKeyLimit(func(key string) bucket.Limit {
		if key == "a" {
			return bucket.PerSecond(100)
		}
		return bucket.Unlimited
	}))
	require.NoError(t, err)
	d, err := dispatcher.New(func(_ context.Context, j job) (int, error) {
		if j.n%10 == 9 {
			return 0, errors.New("failed")
		}
		return j.n, nil
	}, func(j job) string { return j.key }, dispatcher.WithWorkers(4), dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(10))
	require.NoError(t, err)
	defer d.Close()
	var fs []*dispatcher.Future[int]
	for _, k := range []struct {
		key string
		n   int
	}{{"a", 30}, {"b", 20}} {
		for i := range k.n {
			f, err := d.Submit(context.Background(), job{k.key, i})
			require.NoError(t, err)
			fs = append(fs, f)
		}
	}
	for _, f := range fs {
		f.Wait(context.Background())
	}

	c, err := lbprom.NewCollector(d, lbprom.Options{Name: "test", Keys: []string{"a", "never-used"}})
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	defer srv.Close()
	text := scrape(t, srv.URL)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	require.NoError(t, err, "parsing the scrape:\n%s", text)

	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			assert.Equal(t, "test", label(m, "dispatcher"), "%s's dispatcher label", name)
		}
	}
	value := func(name string, labels ...string) float64 {
		t.Helper()
		m := metric(t, fams, name, labels...)
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
		t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
		return 0
	}
	assert.EqualValues(t, 50, value("leakybucket_jobs_submitted_total"))
	assert.EqualValues(t, 45, value("leakybucket_jobs_completed_total", "outcome", "succeeded"))
	assert.EqualValues(t, 5, value("leakybucket_jobs_completed_total", "outcome", "failed"))
	assert.EqualValues(t, 0, value("leakybucket_jobs_completed_total", "outcome", "cancelled"))
	for _, g := range []string{"leakybucket_jobs_queued", "leakybucket_jobs_waiting", "leakybucket_jobs_running"} {
		assert.EqualValues(t, 0, value(g), "%s once every job is done", g)
	}
	assert.EqualValues(t, 0, value("leakybucket_jobs_retried_total"))
	// Each of key a's jobs was admitted once, and again each time it
	// went back to its queue; key b's asked for no admission.
	requeued := value("leakybucket_jobs_requeued_total")
	assert.Equal(t, 30+requeued, value("leakybucket_admissions_total", "result", "admitted"), "admitted, with %v requeued", requeued)
	assert.Positive(t, value("leakybucket_admissions_total", "result", "throttled"), "30 jobs at 100/s with a burst of 1")
	assert.EqualValues(t, 0, value("leakybucket_admissions_total", "result", "paused"))
	assert.EqualValues(t, 0, value("leakybucket_backend_errors_total"))
	assert.EqualValues(t, 0, value("leakybucket_learned_total"), "a fixed limit learned")
	assert.EqualValues(t, 0.01, value("leakybucket_key_interval_seconds", "key", "a"), "key a's 100/s")

	wait := metric(t, fams, "leakybucket_admission_wait_seconds").GetHistogram()
	require.NotNil(t, wait, "leakybucket_admission_wait_seconds is a histogram")
	assert.EqualValues(t, 50, wait.GetSampleCount(), "one admission wait per run")
	// Key a's 30th job waits at least 290ms less the time the submits took.
	assert.Greater(t, wait.GetSampleSum(), 0.29, "the waits' sum")
	counts := map[float64]uint64{}
	prev := uint64(0)
	for _, b := range wait.GetBucket() {
		assert.GreaterOrEqual(t, b.GetCumulativeCount(), prev, "bucket le=%v", b.GetUpperBound())
		prev = b.GetCumulativeCount()
		counts[b.GetUpperBound()] = prev
	}
	assert.Len(t, counts, len(lbprom.DefaultWaitBuckets)+1, "buckets of the admission wait, with +Inf")
	assert.EqualValues(t, 50, counts[math.Inf(1)], "the +Inf bucket")
	assert.Less(t, counts[0.1], uint64(50), "waits up to 100ms, while key a's last jobs wait about 290ms")
	assert.EqualValues(t, 50, counts[3600], "waits up to an hour")

	rtt := metric(t, fams, "leakybucket_backend_round_trip_seconds").GetHistogram()
	require.NotNil(t, rtt, "leakybucket_backend_round_trip_seconds is a histogram")
	assert.EqualValues(t, d.Stats().RoundTrips, rtt.GetSampleCount(), "round trips against Stats")
	assert.Positive(t, rtt.GetSampleCount(), "round trips for key a's admissions")

	assert.EqualValues(t, 30, value("leakybucket_key_jobs_submitted_total", "key", "a"))
	assert.EqualValues(t, 3, value("leakybucket_key_jobs_completed_total", "key", "a", "outcome", "failed"))
	assert.Positive(t, value("leakybucket_key_admissions_throttled_total", "key", "a"))
	for _, m := range fams["leakybucket_key_jobs_submitted_total"].GetMetric() {
		assert.Equal(t, "a", label(m, "key"), "a series of a key the dispatcher keeps no figures for")
	}

	promtool(t, text)
}

// TestCollectorWithoutKeys: by default no metric has a key label, and
// without a Name none has a dispatcher label.
func TestCollectorWithoutKeys(t *testing.T) {
	d, err := dispatcher.New(func(_ context.Context, n int) (int, error) { return n, nil }, nil)
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Do(context.Background(), 1)
	require.NoError(t, err)
	c, err := lbprom.NewCollector(d, lbprom.Options{})
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	fams, err := reg.Gather()
	require.NoError(t, err)
	require.NotEmpty(t, fams)
	for _, fam := range fams {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				assert.Contains(t, []string{"outcome", "result"}, l.GetName(), "a label of %s", fam.GetName())
			}
		}
	}
}

func TestNewCollectorRejects(t *testing.T) {
	d, err := dispatcher.New(func(_ context.Context, n int) (int, error) { return n, nil }, nil)
	require.NoError(t, err)
	defer d.Close()
	tooMany := make([]string, lbprom.MaxKeys+1)
	for i := range tooMany {
		tooMany[i] = "k" + strconv.Itoa(i)
	}
	for _, tc := range []struct {
		name string
		opts lbprom.Options
	}{
		{"empty WaitBuckets", lbprom.Options{WaitBuckets: []float64{}}},
		{"descending WaitBuckets", lbprom.Options{WaitBuckets: []float64{1, 0.5}}},
		{"negative RoundTripBuckets", lbprom.Options{RoundTripBuckets: []float64{-1, 1}}},
		{"too many Keys", lbprom.Options{Keys: tooMany}},
		{"empty key", lbprom.Options{Keys: []string{""}}},
		{"key twice", lbprom.Options{Keys: []string{"a", "a"}}},
		{"Name not UTF-8", lbprom.Options{Name: "\xff"}},
	} {
		_, err := lbprom.NewCollector(d, tc.opts)
		assert.ErrorIs(t, err, lbprom.ErrInvalidOptions, tc.name)
	}
	_, err = lbprom.NewCollector(nil, lbprom.Options{})
	assert.ErrorIs(t, err, lbprom.ErrInvalidOptions, "nil Source")
}

func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return body
}

// metric returns the one metric of family name with the given label
// pairs.
func metric(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	t.Helper()
	fam, ok := fams[name]
	require.True(t, ok, "no metric family %s", name)
	var found *dto.Metric
	for _, m := range fam.GetMetric() {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && label(m, labels[i]) == labels[i+1]
		}
		if match {
			require.Nil(t, found, "two metrics %s%v", name, labels)
			found = m
		}
	}
	require.NotNil(t, found, "no metric %s%v", name, labels)
	return found
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// promtool runs promtool check metrics on text, if promtool is installed
// (Debian's package prometheus); LEAKYBUCKET_REQUIRE_PROMTOOL=1 makes its
// absence a failure.
func promtool(t *testing.T, text []byte) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("LEAKYBUCKET_REQUIRE_PROMTOOL") == "1" {
			t.Fatalf("promtool not found, and LEAKYBUCKET_REQUIRE_PROMTOOL=1: %v", err)
		}
		t.Skipf("promtool not found (apt-get install prometheus): %v", err)
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	out, err := cmd.CombinedOutput()
	assert.NoError(t, err, "promtool check metrics:\n%s\non:\n%s", out, text)
}

// BenchmarkGather measures a scrape's work apart from HTTP: reading the
// figures of a Dispatcher with 8 workers that has run jobs, and building
// the metrics.
func BenchmarkGather(b *testing.B) {
	d, err := dispatcher.New(func(_ context.Context, n int) (int, error) { return n, nil }, nil, dispatcher.WithWorkers(8))
	require.NoError(b, err)
	defer d.Close()
	for i := range 10_000 {
		_, err := d.Submit(context.Background(), i)
		require.NoError(b, err)
	}
	c, err := lbprom.NewCollector(d, lbprom.Options{})
	require.NoError(b, err)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
