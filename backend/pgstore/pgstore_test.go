package pgstore_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// pgxpool's background health check ends a moment after Close.
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"))
}

// newPool returns a pool on the test server, closed at the end of t.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.Pool(t, pgtest.URL(t))
}

// newStore returns a Store closed at the end of t. Unless opts names one,
// its schema is t's own, dropped at the end of t.
func newStore(t testing.TB, p *pgxpool.Pool, opts pgstore.Options) *pgstore.Store {
	t.Helper()
	if opts.Schema == "" {
		opts.Schema = pgtest.Schema(t, p.Config().ConnString())
	}
	s, err := pgstore.New(p, opts)
	require.NoError(t, err, "New")
	t.Cleanup(func() { s.Close() })
	return s
}

// forgotten reports whether s holds no row for key, of its bucket or of
// a lease, after a sweep.
func forgotten(t *testing.T, b driver.Backend, key string) bool {
	s := b.(*pgstore.Store)
	ctx := context.Background()
	_, err := pgstore.Sweep(ctx, s)
	require.NoError(t, err, "sweep")
	var n int
	err = s.Pool().QueryRow(ctx, "SELECT (SELECT count(*) FROM "+s.Table()+" WHERE key = $1) + (SELECT count(*) FROM "+pgstore.LeaseTable(s)+" WHERE key = $1)",
		pgx.QueryExecModeExec, []byte(key)).Scan(&n)
	require.NoError(t, err, "count the key's rows")
	return n == 0
}

func conformance(t *testing.T, url string, opts pgstore.Options) {
	opts.Schema = pgtest.Schema(t, url)
	backendtest.Run(t, backendtest.Config{
		New: func(t *testing.T) driver.Backend {
			return newStore(t, pgtest.Pool(t, url), opts)
		},
		Peer: func(t *testing.T, b driver.Backend) driver.Backend {
			return newStore(t, pgtest.Pool(t, url), opts)
		},
		Forgotten: forgotten,
	})
}

func TestConformance(t *testing.T) {
	conformance(t, pgtest.URL(t), pgstore.Options{})
}

func TestConformanceUnbatched(t *testing.T) {
	conformance(t, pgtest.URL(t), pgstore.Options{Conns: -1})
}

func TestOptions(t *testing.T) {
	p := newPool(t)
	for _, opts := range []pgstore.Options{
		{FailurePolicy: -1},
		{FailurePolicy: pgstore.FailLocal + 1},
		{Conns: -2},
		{MaxBatch: -1},
		{Conns: -1, MaxBatch: 8},
		{Timeout: -time.Second},
	} {
		if s, err := pgstore.New(p, opts); !assert.Error(t, err, "New(%+v)", opts) {
			s.Close()
		}
	}
	_, err := pgstore.New(nil, pgstore.Options{})
	assert.Error(t, err, "New(nil pool)")
	s, err := pgstore.New(p, pgstore.Options{SweepInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, `"leakybucket".buckets`, s.Table(), "Table with the default schema")
	s, err = pgstore.New(p, pgstore.Options{Schema: `a"b`, SweepInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, `"a""b".buckets`, s.Table(), "Table of a schema that needs quoting")
}

// TestKeys checks that keys of any bytes map to distinct rows, byte for
// byte.
func TestKeys(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{})
	ctx := context.Background()
	keys := []string{"a", "A", "a\x00", "\x00", "\n", "\xff", "'; DROP TABLE x; --", strings.Repeat("\xfe{", 512)}
	for _, k := range keys {
		d, err := s.Admit(ctx, driver.Request{Key: k, Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
		require.NoError(t, err, "Admit(%q)", k)
		require.True(t, d.Allowed, "Admit(%q)", k)
		var got []byte
		err = s.Pool().QueryRow(ctx, "SELECT key FROM "+s.Table()+" WHERE key = $1", []byte(k)).Scan(&got)
		require.NoError(t, err, "the row of %q", k)
		assert.Equal(t, []byte(k), got, "the row's key")
	}
}

func TestClosed(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{})
	s.Close()
	s.Close()
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	_, err := s.Admit(ctx, req)
	assert.ErrorIs(t, err, bucket.ErrClosed, "Admit after Close")
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), bucket.ErrClosed, "Pause after Close")
	batch := []driver.Admission{{Request: req}}
	s.AdmitBatch(ctx, batch)
	assert.ErrorIs(t, batch[0].Err, bucket.ErrClosed, "AdmitBatch after Close")
	_, err = s.Renew(ctx, []driver.LeaseRef{{Key: "k", ID: "a"}}, time.Second)
	assert.ErrorIs(t, err, bucket.ErrClosed, "Renew after Close")
	assert.ErrorIs(t, s.Release(ctx, []driver.LeaseRef{{Key: "k", ID: "a"}}), bucket.ErrClosed, "Release after Close")
}

func TestCancelledContext(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1)), Cost: 1}
	_, err := s.Admit(ctx, req)
	assert.ErrorIs(t, err, context.Canceled, "Admit with a cancelled ctx")
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), context.Canceled, "Pause with a cancelled ctx")
	d, err := s.Admit(context.Background(), req)
	assert.NoError(t, err, "Admit after cancelled calls")
	assert.True(t, d.Allowed, "Admit after cancelled calls")
}

// TestSchemaInstalledOnce: Stores starting at once on a new schema
// install it once, and it records SchemaVersion.
func TestSchemaInstalledOnce(t *testing.T) {
	p := newPool(t)
	schema := pgtest.Schema(t, p.Config().ConnString())
	ctx := context.Background()
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() {
			s, err := pgstore.New(p, pgstore.Options{Schema: schema, SweepInterval: -1})
			if err == nil {
				_, err = s.Admit(ctx, driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(100)), Cost: 1})
				s.Close()
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		assert.NoError(t, <-errs, "Admit of a Store starting beside 7 others")
	}
	var version int
	require.NoError(t, p.QueryRow(ctx, "SELECT version FROM "+pgx.Identifier{schema}.Sanitize()+".version").Scan(&version))
	assert.Equal(t, pgstore.SchemaVersion, version, "schema version")
}

// TestSweep: the sweep deletes the rows of fresh buckets and keeps the
// others.
func TestSweep(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{SweepInterval: -1})
	ctx := context.Background()
	for i := range 2500 {
		_, err := s.Admit(ctx, driver.Request{Key: "gone" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Limit: backendtest.Limit(bucket.Every(time.Millisecond, 1)), Cost: 1})
		require.NoError(t, err)
	}
	_, err := s.Admit(ctx, driver.Request{Key: "kept", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
	require.NoError(t, err)
	time.Sleep(5 * time.Millisecond) // the millisecond buckets become fresh
	n, err := pgstore.Sweep(ctx, s)
	require.NoError(t, err)
	assert.Equal(t, int64(2500), n, "rows swept: the fresh ones, over several chunks")
	var left int
	require.NoError(t, s.Pool().QueryRow(ctx, "SELECT count(*) FROM "+s.Table()).Scan(&left))
	assert.Equal(t, 1, left, "rows left")
}

// TestDurable: a Store that waits for its commits' flush shares the
// buckets of one that does not.
func TestDurable(t *testing.T) {
	p := newPool(t)
	schema := pgtest.Schema(t, p.Config().ConnString())
	durable := newStore(t, p, pgstore.Options{Schema: schema, Durable: true})
	async := newStore(t, p, pgstore.Options{Schema: schema})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(2).WithBurst(2)), Cost: 1}
	for i, s := range []*pgstore.Store{durable, async, durable} {
		d, err := s.Admit(ctx, req)
		require.NoError(t, err, "Admit %d", i)
		assert.Equal(t, i < 2, d.Allowed, "Admit %d of a burst of 2, alternately durable", i)
	}
}

// TestLongKeys: a key of MaxKeyLen bytes works; a longer one, which the
// primary key's index could not hold, is refused before any round trip
// with ErrKeyTooLong, and does not count as an outage.
func TestLongKeys(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{FailurePolicy: pgstore.FailOpen})
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerHour(1))
	long := strings.Repeat("\xff", pgstore.MaxKeyLen)
	d, err := s.Admit(ctx, driver.Request{Key: long, Limit: lim, Cost: 1})
	require.NoError(t, err, "Admit of a key of MaxKeyLen bytes")
	require.True(t, d.Allowed, "Admit of a key of MaxKeyLen bytes")
	d, err = s.Admit(ctx, driver.Request{Key: long, Limit: lim, Cost: 1})
	require.NoError(t, err)
	assert.False(t, d.Allowed, "second Admit of burst 1 on the long key")

	tooLong := long + "x"
	_, err = s.Admit(ctx, driver.Request{Key: tooLong, Limit: lim, Cost: 1})
	assert.ErrorIs(t, err, pgstore.ErrKeyTooLong, "Admit")
	assert.ErrorIs(t, s.Pause(ctx, tooLong, time.Second), pgstore.ErrKeyTooLong, "Pause")
	assert.ErrorIs(t, s.Refund(ctx, driver.Request{Key: tooLong, Limit: lim, Cost: 1}, driver.Decision{Allowed: true, Booking: driver.Booking{TAT: 1}}), pgstore.ErrKeyTooLong, "Refund")
	batch := []driver.Admission{{Request: driver.Request{Key: tooLong, Limit: lim, Cost: 1}}, {Request: driver.Request{Key: "short", Limit: lim, Cost: 1}}}
	s.AdmitBatch(ctx, batch)
	assert.ErrorIs(t, batch[0].Err, pgstore.ErrKeyTooLong, "AdmitBatch[0]")
	assert.NoError(t, batch[1].Err, "AdmitBatch[1], beside a key too long")
	assert.True(t, batch[1].Decision.Allowed, "AdmitBatch[1], beside a key too long")
}

// TestExactRange: quota counts are summed in numeric, so no quota or
// burst is too large to count exactly (redisstore lowers quotas above
// 2^50).
func TestExactRange(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{})
	ctx := context.Background()
	huge := bucket.PerSecond(1).WithQuota(math.MaxInt64, time.Hour).WithQuota(math.MaxInt64-1, time.Minute)
	for i := range 2 {
		d, err := s.Admit(ctx, driver.Request{Key: "huge-quota", Limit: backendtest.Limit(huge), Cost: 1, MaxWait: 2 * time.Second})
		require.NoError(t, err, "Admit %d under quotas of MaxInt64", i)
		assert.True(t, d.Allowed, "Admit %d under quotas of MaxInt64", i)
	}
	fast := bucket.Every(time.Second, 1_000_000_000).WithBurst(1<<50+1).WithQuota(1<<62, time.Hour)
	d, err := s.Admit(ctx, driver.Request{Key: "huge-burst", Limit: backendtest.Limit(fast), Cost: 1 << 50})
	require.NoError(t, err, "Admit of cost 2^50 with a burst of 2^50+1 and a quota")
	assert.True(t, d.Allowed, "Admit of cost 2^50 with a burst of 2^50+1 and a quota")
}

// TestSchemaDropped: a Store whose schema is dropped while it runs (an
// operator starting every bucket afresh) installs it again at its next
// call, by Admit, AdmitBatch, Refund or the sweep, rather than failing
// every call until the process restarts.
func TestSchemaDropped(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{SweepInterval: -1})
	ctx := context.Background()
	schema := strings.TrimSuffix(s.Table(), ".buckets")
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	drop := func() {
		t.Helper()
		_, err := s.Pool().Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
		require.NoError(t, err, "DROP SCHEMA")
	}
	for _, call := range []struct {
		name string
		do   func() (driver.Decision, error)
	}{
		{"Admit", func() (driver.Decision, error) { return s.Admit(ctx, req) }},
		{"AdmitBatch", func() (driver.Decision, error) {
			batch := []driver.Admission{{Request: req}}
			s.AdmitBatch(ctx, batch)
			return batch[0].Decision, batch[0].Err
		}},
	} {
		d, err := call.do()
		require.NoError(t, err, "%s before the drop", call.name)
		require.True(t, d.Allowed, "%s before the drop", call.name)
		drop()
		d, err = call.do()
		require.NoError(t, err, "%s after the schema was dropped", call.name)
		assert.True(t, d.Allowed, "%s after the schema was dropped: its bucket starts fresh", call.name)
		drop()
		_, err = pgstore.Sweep(ctx, s)
		require.NoError(t, err, "sweep after the schema was dropped")
	}
}

// TestNewerSchema: a Store that finds a later version of its schema than
// its own (another process was upgraded first) uses the schema as it is,
// and leaves its version alone: versions only ever add.
func TestNewerSchema(t *testing.T) {
	p := newPool(t)
	schema := pgtest.Schema(t, p.Config().ConnString())
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(2).WithBurst(2)), Cost: 1}
	first := newStore(t, p, pgstore.Options{Schema: schema, SweepInterval: -1})
	_, err := first.Admit(ctx, req)
	require.NoError(t, err, "Admit installing the schema")
	first.Close()
	version := pgx.Identifier{schema}.Sanitize() + ".version"
	_, err = p.Exec(ctx, "UPDATE "+version+" SET version = $1", pgstore.SchemaVersion+1)
	require.NoError(t, err)

	s := newStore(t, p, pgstore.Options{Schema: schema, SweepInterval: -1})
	d, err := s.Admit(ctx, req)
	require.NoError(t, err, "Admit on a schema of version %d", pgstore.SchemaVersion+1)
	assert.True(t, d.Allowed, "second of a burst of 2, on the newer schema")
	d, err = s.Admit(ctx, req)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "third of a burst of 2: the bucket is the first Store's")
	var v int
	require.NoError(t, p.QueryRow(ctx, "SELECT version FROM "+version).Scan(&v))
	assert.Equal(t, pgstore.SchemaVersion+1, v, "the schema's version after an older Store used it")
}

// TestSchemaInstallRefused: a server that answers but refuses to create
// the schema says why, naming the schema; a read-only one (a standby)
// counts as unavailable, so that a failure policy answers.
func TestSchemaInstallRefused(t *testing.T) {
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	readOnly := url + "?options=-c%20default_transaction_read_only%3Don"
	if strings.Contains(url, "?") {
		readOnly = url + "&options=-c%20default_transaction_read_only%3Don"
	}
	s := newStore(t, pgtest.Pool(t, readOnly), pgstore.Options{Schema: schema, SweepInterval: -1})
	_, err := s.Admit(context.Background(), driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1})
	assert.ErrorIs(t, err, pgstore.ErrUnavailable, "Admit on a read-only server")
	assert.ErrorContains(t, err, "schema "+pgx.Identifier{schema}.Sanitize()+": installing:", "Admit on a read-only server")
	assert.ErrorContains(t, err, "read-only transaction", "Admit on a read-only server")
}
