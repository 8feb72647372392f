package otel_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	lbotel "github.com/leakybucket/leakybucket/exporters/otel"
	"github.com/leakybucket/leakybucket/middleware"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type job struct {
	key string
	n   int
}

func jobKey(j job) string { return j.key }

// newLimiter returns a limiter over a fresh memstore, closed at cleanup,
// that gives key "a" and "c" 10 jobs a second and the others no limit.
func newLimiter(t *testing.T) *bucket.Limiter {
	t.Helper()
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	lim, err := bucket.NewLimiter(store, bucket.PerSecond(10), bucket.WithKeyLimit(func(key string) bucket.Limit {
		if key == "a" || key == "c" {
			return bucket.PerSecond(10)
		}
		return bucket.Unlimited
	}))
	require.NoError(t, err)
	return lim
}

func newDispatcher[R any](t *testing.T, h dispatcher.Handler[job, R], opts ...dispatcher.Option) *dispatcher.Dispatcher[job, R] {
	t.Helper()
	d, err := dispatcher.New(h, jobKey, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// newMeterProvider returns a MeterProvider and the ManualReader that
// collects its metrics.
func newMeterProvider(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { assert.NoError(t, mp.Shutdown(context.Background())) })
	return mp, reader
}

// collect returns what reader collects, by instrument name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	ms := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(t, lbotel.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			ms[m.Name] = m
		}
	}
	return ms
}

// sum returns the value of the data point of sum name whose attributes
// are attrs, and whether there is one.
func sum[N int64 | float64](t *testing.T, ms map[string]metricdata.Metrics, name string, attrs ...attribute.KeyValue) (N, bool) {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		return 0, false
	}
	s, ok := m.Data.(metricdata.Sum[N])
	require.True(t, ok, "%s is a %T, not a Sum[%T]", name, m.Data, N(0))
	want := attribute.NewSet(attrs...)
	for _, p := range s.DataPoints {
		if p.Attributes.Equals(&want) {
			return p.Value, true
		}
	}
	return 0, false
}

// value is sum's value, which must exist.
func value[N int64 | float64](t *testing.T, ms map[string]metricdata.Metrics, name string, attrs ...attribute.KeyValue) N {
	t.Helper()
	v, ok := sum[N](t, ms, name, attrs...)
	require.True(t, ok, "no data point of %s with %v", name, attrs)
	return v
}

// points returns the data points of sum name.
func points(t *testing.T, ms map[string]metricdata.Metrics, name string) []metricdata.DataPoint[int64] {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		return nil
	}
	s, ok := m.Data.(metricdata.Sum[int64])
	require.True(t, ok, "%s is a %T, not a Sum[int64]", name, m.Data)
	return s.DataPoints
}

// TestRegisterMetrics runs jobs of three keys through a real Dispatcher
// with a memstore limiter (key a and c at 10/s, b unlimited; every tenth
// job fails, one panics, one asks for a retry-after once, one is cancelled
// while it waits), collects its metrics through a ManualReader, and checks
// them against the jobs run and against Stats; only the listed key a has
// per-key data points.
func TestRegisterMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var asked atomic.Bool
		h := func(_ context.Context, j job) (int, error) {
			switch {
			case j.key == "b" && j.n == 4:
				panic("boom")
			case j.key == "a" && j.n == 3 && !asked.Swap(true):
				return 0, &middleware.RetryAfterError{Delay: time.Second}
			case j.n%10 == 9:
				return 0, errors.New("failed")
			}
			return j.n, nil
		}
		d := newDispatcher(t, h, dispatcher.WithWorkers(4), dispatcher.WithLimiter(newLimiter(t)), dispatcher.WithKeyStats(10))
		mp, reader := newMeterProvider(t)
		reg, err := lbotel.RegisterMetrics(d, lbotel.Options{MeterProvider: mp, Name: "test", Keys: []string{"a", "never-used"}})
		require.NoError(t, err)
		defer reg.Unregister()

		var fs []*dispatcher.Future[int]
		for _, k := range []struct {
			key string
			n   int
		}{{"a", 20}, {"b", 20}, {"c", 5}} {
			for i := range k.n {
				f, err := d.Submit(context.Background(), job{k.key, i})
				require.NoError(t, err)
				fs = append(fs, f)
			}
		}
		// Key c's sixth job, cancelled while its key holds it back.
		ctx, cancel := context.WithCancel(context.Background())
		f, err := d.Submit(ctx, job{"c", 5})
		require.NoError(t, err)
		fs = append(fs, f)
		cancel()

		// Half a second in, key a's jobs wait for their slots.
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		ms := collect(t, reader)
		name := lbotel.DispatcherNameKey.String("test")
		assert.Positive(t, value[int64](t, ms, "leakybucket.queued_jobs", name), "jobs queued at 500ms")
		assert.Positive(t, value[int64](t, ms, "leakybucket.waiting_jobs", name), "jobs waiting at 500ms")

		for _, f := range fs {
			f.Wait(context.Background())
		}
		synctest.Wait()
		ms = collect(t, reader)
		st := d.Stats()
		assert.EqualValues(t, 46, value[int64](t, ms, "leakybucket.submitted_jobs", name))
		outcome := func(o string) attribute.KeyValue { return lbotel.OutcomeKey.String(o) }
		// Failed: a's jobs 9 and 19, b's 9 and 19, and b's panic.
		for o, want := range map[string]int64{"succeeded": 40, "failed": 5, "cancelled": 1} {
			assert.Equal(t, want, value[int64](t, ms, "leakybucket.completed_jobs", name, outcome(o)), o)
		}
		for _, g := range []string{"leakybucket.queued_jobs", "leakybucket.waiting_jobs", "leakybucket.running_jobs"} {
			assert.Zero(t, value[int64](t, ms, g, name), "%s once every job is done", g)
		}
		assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.job.retries", name))
		requeued := value[int64](t, ms, "leakybucket.job.requeues", name)
		assert.Equal(t, st.Requeued, requeued)
		result := func(r string) attribute.KeyValue { return lbotel.AdmissionResultKey.String(r) }
		// Key a's 20 runs and its retry, and key c's 5: each took an
		// admission, and one more each time it went back to its queue.
		assert.Equal(t, 26+requeued, value[int64](t, ms, "leakybucket.admissions", name, result("admitted")), "with %d requeued", requeued)
		assert.Equal(t, st.Throttled, value[int64](t, ms, "leakybucket.admissions", name, result("throttled")))
		assert.Positive(t, st.Throttled, "jobs at 10/s with a burst of 1")
		assert.Equal(t, st.Paused, value[int64](t, ms, "leakybucket.admissions", name, result("paused")))
		assert.Equal(t, st.RoundTrips, value[int64](t, ms, "leakybucket.backend.round_trips", name))
		assert.Positive(t, st.RoundTrips)
		assert.Equal(t, d.Histograms().RoundTrip.Sum.Seconds(), value[float64](t, ms, "leakybucket.backend.round_trip.time", name))
		assert.Zero(t, value[int64](t, ms, "leakybucket.backend.errors", name))

		key := lbotel.KeyKey.String("a")
		assert.EqualValues(t, 20, value[int64](t, ms, "leakybucket.per_key.submitted_jobs", name, key))
		for o, want := range map[string]int64{"succeeded": 18, "failed": 2, "cancelled": 0} {
			assert.Equal(t, want, value[int64](t, ms, "leakybucket.per_key.completed_jobs", name, key, outcome(o)), "key a %s", o)
		}
		assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.per_key.job.retries", name, key))
		assert.Positive(t, value[int64](t, ms, "leakybucket.per_key.throttled_admissions", name, key))
		ks, ok := d.KeyStats("a")
		require.True(t, ok)
		assert.Equal(t, ks.Late, value[int64](t, ms, "leakybucket.per_key.late_admissions", name, key))
		gauge := ms["leakybucket.per_key.interval"].Data.(metricdata.Gauge[float64])
		require.Len(t, gauge.DataPoints, 1, "key a's interval")
		assert.Equal(t, 0.1, gauge.DataPoints[0].Value, "key a's 10/s")
		assert.Zero(t, value[int64](t, ms, "leakybucket.learned", name), "a fixed limit learned")

		// Every data point carries the dispatcher's name, and a key only
		// on the per-key instruments, key a alone.
		for n, m := range ms {
			for _, attrs := range attributeSets(t, m) {
				v, ok := attrs.Value(lbotel.DispatcherNameKey)
				assert.True(t, ok && v.AsString() == "test", "%s's dispatcher name in %v", n, attrs.ToSlice())
				if k, ok := attrs.Value(lbotel.KeyKey); ok {
					assert.Equal(t, "a", k.AsString(), "%s's key", n)
				}
			}
		}
		assert.Len(t, points(t, ms, "leakybucket.per_key.completed_jobs"), 3, "key a's three outcomes")
	})
}

// attributeSets returns the attribute sets of m's data points.
func attributeSets(t *testing.T, m metricdata.Metrics) []attribute.Set {
	t.Helper()
	var sets []attribute.Set
	switch data := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range data.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Sum[float64]:
		for _, p := range data.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Gauge[float64]:
		for _, p := range data.DataPoints {
			sets = append(sets, p.Attributes)
		}
	default:
		t.Fatalf("%s is a %T", m.Name, m.Data)
	}
	return sets
}

// TestRegisterMetricsWithoutKeys: by default no instrument is per key,
// and without a Name no data point has a dispatcher attribute.
func TestRegisterMetricsWithoutKeys(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, j job) (int, error) { return j.n, nil })
	_, err := d.Do(context.Background(), job{"a", 1})
	require.NoError(t, err)
	mp, reader := newMeterProvider(t)
	reg, err := lbotel.RegisterMetrics(d, lbotel.Options{MeterProvider: mp})
	require.NoError(t, err)
	defer reg.Unregister()
	ms := collect(t, reader)
	assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.submitted_jobs"))
	assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.completed_jobs", lbotel.OutcomeKey.String("succeeded")))
	for n, m := range ms {
		assert.NotContains(t, n, "per_key")
		for _, attrs := range attributeSets(t, m) {
			for _, kv := range attrs.ToSlice() {
				assert.Contains(t, []attribute.Key{lbotel.OutcomeKey, lbotel.AdmissionResultKey}, kv.Key, "an attribute of %s", n)
			}
		}
	}
}

// TestRegisterMetricsMaxKeys runs a job of each of MaxKeys listed keys and
// of one more key, unlisted: every listed key has its data points, the
// unlisted one none, and the SDK's default cardinality limit folds none
// into an overflow data point.
func TestRegisterMetricsMaxKeys(t *testing.T) {
	keys := make([]string, lbotel.MaxKeys)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	d := newDispatcher(t, func(_ context.Context, j job) (int, error) { return j.n, nil },
		dispatcher.WithLimiter(newLimiter(t)), dispatcher.WithKeyStats(lbotel.MaxKeys+1))
	var fs []*dispatcher.Future[int]
	for _, k := range append(keys, "unlisted") {
		f, err := d.Submit(context.Background(), job{k, 1})
		require.NoError(t, err)
		fs = append(fs, f)
	}
	for _, f := range fs {
		_, err := f.Wait(context.Background())
		require.NoError(t, err)
	}
	_, ok := d.KeyStats("unlisted")
	require.True(t, ok, "the dispatcher keeps the unlisted key's figures")
	mp, reader := newMeterProvider(t)
	reg, err := lbotel.RegisterMetrics(d, lbotel.Options{MeterProvider: mp, Keys: keys})
	require.NoError(t, err)
	defer reg.Unregister()
	ms := collect(t, reader)
	for _, name := range []string{"leakybucket.per_key.submitted_jobs", "leakybucket.per_key.completed_jobs"} {
		seen := map[string]bool{}
		for _, p := range points(t, ms, name) {
			_, overflow := p.Attributes.Value("otel.metric.overflow")
			require.False(t, overflow, "%s overflowed the cardinality limit", name)
			k, _ := p.Attributes.Value(lbotel.KeyKey)
			seen[k.AsString()] = true
		}
		assert.Len(t, seen, lbotel.MaxKeys, "%s's keys", name)
		assert.False(t, seen["unlisted"], "%s has the unlisted key", name)
	}
	assert.Len(t, points(t, ms, "leakybucket.per_key.completed_jobs"), 3*lbotel.MaxKeys)
	assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.per_key.submitted_jobs", lbotel.KeyKey.String(keys[lbotel.MaxKeys-1])))
}

// countingSource counts the reads of its dispatcher's Stats.
type countingSource struct {
	lbotel.Source
	reads atomic.Int64
}

func (s *countingSource) Stats() dispatcher.Stats {
	s.reads.Add(1)
	return s.Source.Stats()
}

// TestUnregister: two dispatchers registered on one MeterProvider report
// data points of their own names; once one is unregistered, its
// dispatcher is read no more and its data points are gone, while the
// other's stay. A second Unregister does nothing.
func TestUnregister(t *testing.T) {
	h := func(_ context.Context, j job) (int, error) { return j.n, nil }
	one, two := newDispatcher(t, h), newDispatcher(t, h)
	for range 3 {
		_, err := one.Do(context.Background(), job{"a", 1})
		require.NoError(t, err)
	}
	_, err := two.Do(context.Background(), job{"a", 1})
	require.NoError(t, err)
	mp, reader := newMeterProvider(t)
	src := &countingSource{Source: one}
	reg, err := lbotel.RegisterMetrics(src, lbotel.Options{MeterProvider: mp, Name: "one"})
	require.NoError(t, err)
	reg2, err := lbotel.RegisterMetrics(two, lbotel.Options{MeterProvider: mp, Name: "two"})
	require.NoError(t, err)
	defer reg2.Unregister()

	ms := collect(t, reader)
	assert.EqualValues(t, 3, value[int64](t, ms, "leakybucket.submitted_jobs", lbotel.DispatcherNameKey.String("one")))
	assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.submitted_jobs", lbotel.DispatcherNameKey.String("two")))
	assert.EqualValues(t, 1, src.reads.Load())

	require.NoError(t, reg.Unregister())
	ms = collect(t, reader)
	assert.EqualValues(t, 1, src.reads.Load(), "reads of an unregistered dispatcher")
	for n, m := range ms {
		for _, attrs := range attributeSets(t, m) {
			v, _ := attrs.Value(lbotel.DispatcherNameKey)
			assert.Equal(t, "two", v.AsString(), "a data point of %s after Unregister", n)
		}
	}
	assert.EqualValues(t, 1, value[int64](t, ms, "leakybucket.submitted_jobs", lbotel.DispatcherNameKey.String("two")))
	assert.NoError(t, reg.Unregister(), "a second Unregister")
}

// TestRegisterMetricsGlobal: without a MeterProvider, RegisterMetrics
// uses the global one (a no-op until one is set).
func TestRegisterMetricsGlobal(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, j job) (int, error) { return j.n, nil })
	reg, err := lbotel.RegisterMetrics(d, lbotel.Options{})
	require.NoError(t, err)
	assert.NoError(t, reg.Unregister())
}

func TestRegisterMetricsRejects(t *testing.T) {
	d := newDispatcher(t, func(_ context.Context, j job) (int, error) { return j.n, nil })
	tooMany := make([]string, lbotel.MaxKeys+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprint("k", i)
	}
	for _, tc := range []struct {
		name string
		opts lbotel.Options
	}{
		{"too many Keys", lbotel.Options{Keys: tooMany}},
		{"empty key", lbotel.Options{Keys: []string{""}}},
		{"key not UTF-8", lbotel.Options{Keys: []string{"\xff"}}},
		{"key twice", lbotel.Options{Keys: []string{"a", "a"}}},
		{"Name not UTF-8", lbotel.Options{Name: "\xff"}},
	} {
		_, err := lbotel.RegisterMetrics(d, tc.opts)
		assert.ErrorIs(t, err, lbotel.ErrInvalidOptions, tc.name)
	}
	_, err := lbotel.RegisterMetrics(nil, lbotel.Options{})
	assert.ErrorIs(t, err, lbotel.ErrInvalidOptions, "nil Source")
}

// BenchmarkCollect measures a collection's work: reading the figures of a
// Dispatcher with 8 workers that has run jobs, with and without 100 keys,
// and the SDK's aggregation of them.
func BenchmarkCollect(b *testing.B) {
	for _, nkeys := range []int{0, 100} {
		b.Run(fmt.Sprint("keys=", nkeys), func(b *testing.B) {
			store, err := memstore.New(memstore.Options{})
			require.NoError(b, err)
			defer store.Close()
			lim, err := bucket.NewLimiter(store, bucket.Unlimited)
			require.NoError(b, err)
			d, err := dispatcher.New(func(_ context.Context, j job) (int, error) { return j.n, nil }, jobKey,
				dispatcher.WithWorkers(8), dispatcher.WithLimiter(lim), dispatcher.WithKeyStats(1000))
			require.NoError(b, err)
			defer d.Close()
			keys := make([]string, nkeys)
			for i := range keys {
				keys[i] = fmt.Sprint("k", i)
			}
			for i := range 10_000 {
				_, err := d.Submit(context.Background(), job{fmt.Sprint("k", i%100), i})
				require.NoError(b, err)
			}
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			reg, err := lbotel.RegisterMetrics(d, lbotel.Options{MeterProvider: mp, Keys: keys})
			require.NoError(b, err)
			defer reg.Unregister()
			var rm metricdata.ResourceMetrics
			b.ReportAllocs()
			for b.Loop() {
				if err := reader.Collect(context.Background(), &rm); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
