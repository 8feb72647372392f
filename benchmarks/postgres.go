package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
)

const postgresTime = 500 * time.Millisecond

// postgresOpen is a limit that never binds in microsecond ticks, so that
// every admission is charged and written.
var postgresOpen = bucket.PerSecond(1_000_000).WithBurst(1_000_000_000)

// postgresURL returns the server the PostgreSQL comparisons use,
// LEAKYBUCKET_POSTGRES_URL or the local one, and "" and why if it does
// not answer.
func postgresURL() (string, string) {
	url := os.Getenv("LEAKYBUCKET_POSTGRES_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", fmt.Sprintf("no PostgreSQL at %s (set LEAKYBUCKET_POSTGRES_URL): %v", url, err)
	}
	c.Close(ctx)
	return url, url
}

// postgresSchema returns the schema of the run of process pid, dropped
// at its end: children name their parent's.
func postgresSchema(pid int) string { return fmt.Sprintf("lbbench_%d", pid) }

func dropSchema(url, schema string) {
	ctx := context.Background()
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		c.Close(ctx)
	}
}

// postgresChild serves a parent as sqliteChild does, on the server at url
// and its parent's schema: "dispatch NS OFFSET" runs
// jobs through a Dispatcher (8 workers) over 1,000 keys for NS
// nanoseconds and answers "done COUNT ELAPSED_NS MALLOCS".
func postgresChild(url, schema string, in io.Reader, out io.Writer) error {
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		return err
	}
	defer pool.Close()
	s, err := pgstore.New(pool, pgstore.Options{Schema: schema})
	if err != nil {
		return err
	}
	defer s.Close()
	lim, err := bucket.NewLimiter(s, postgresOpen)
	if err != nil {
		return err
	}
	ks := keys(1000)
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var (
			mode   string
			ns     int64
			offset int
		)
		if _, err := fmt.Sscan(sc.Text(), &mode, &ns, &offset); err != nil || mode != "dispatch" {
			return fmt.Errorf("bad command %q: %v", sc.Text(), err)
		}
		m0 := mallocs()
		t0 := time.Now()
		d, err := dispatcher.New(func(_ context.Context, i int) (int, error) { return i, nil }, func(i int) string { return ks[i%len(ks)] },
			dispatcher.WithWorkers(8), dispatcher.WithLimiter(lim))
		if err != nil {
			return err
		}
		n := feed(d, -1, t0.Add(time.Duration(ns)), offset, 7) // only what completed counts
		fmt.Fprintf(out, "done %d %d %d\n", n, time.Since(t0).Nanoseconds(), mallocs()-m0)
	}
	return sc.Err()
}

// postgresDispatch measures jobs through Dispatchers in procs processes
// sharing 1,000 keys in PostgreSQL, each Dispatcher deciding the
// admissions of many keys in one statement. No anchor library batches
// admissions in PostgreSQL: the figure stands against its target.
func postgresDispatch(procs int) func(r *reporter) {
	return func(r *reporter) {
		url, note := postgresURL()
		if url == "" {
			r.skip(note)
			return
		}
		defer dropSchema(url, postgresSchema(os.Getpid()))
		children := make([]*child, procs)
		for i := range children {
			c, err := startChild("-child", "postgres", "-child-path", url)
			if err != nil {
				panic(err)
			}
			children[i] = c
			defer c.stop()
			if l := c.line(); l != "ready" {
				panic(fmt.Sprintf("child said %q\n%s", l, c.stderr.String()))
			}
			// A warm-up: the first child installs the schema before the
			// others start, and each process fills its pool and its
			// connections' plan caches before it is measured.
			c.say("dispatch %d 0", (200 * time.Millisecond).Nanoseconds())
			c.line()
		}
		run := func() sample {
			for i, c := range children {
				c.say("dispatch %d %d", postgresTime.Nanoseconds(), i*131)
			}
			var rate, count, allocs float64
			for _, c := range children {
				var n, ns, m int64
				if _, err := fmt.Sscanf(c.line(), "done %d %d %d", &n, &ns, &m); err != nil {
					panic(err)
				}
				rate += float64(n) / (float64(ns) / 1e9)
				count += float64(n)
				allocs += float64(m)
			}
			return sample{"jobs/s": rate, "allocs/job": allocs / count}
		}
		res := repeat(r.reps, contender{"dispatch", run})
		name := fmt.Sprintf("Dispatcher + pgstore, %d processes", procs)
		r.compare(metricSpec{key: "jobs/s", label: "jobs through Dispatchers, batched", unit: "jobs/s", better: "higher",
			target: atLeast(30_000, "≥ 30,000/s"), note: "no anchor library batches admissions in PostgreSQL"},
			name, res["dispatch"], "", nil)
		r.compare(metricSpec{key: "allocs/job", label: "allocations", unit: "allocs/job", better: "lower"}, name, res["dispatch"], "", nil)
	}
}

// tokenBucketSQL is fafl/token-bucket-postgres (MIT, commit 115ea5f), its
// tables and its function take_token as published: a PL/pgSQL token
// bucket that locks its table for every take.
const tokenBucketSQL = `
CREATE TABLE token_buckets (
    user_id VARCHAR(100) PRIMARY KEY,
    tokens INTEGER,
    last_refill TIMESTAMP
);
CREATE TABLE token_rates (
    user_id VARCHAR(100) PRIMARY KEY,
    per_hour INTEGER
);
CREATE OR REPLACE FUNCTION take_token (user_id VARCHAR(100)) RETURNS boolean AS $$
DECLARE
    rate INTEGER;
    tokens INTEGER;
    extra_tokens INTEGER;
    new_tokens INTEGER;
    last_refill TIMESTAMP;
    this_refill TIMESTAMP;
BEGIN
    -- Check if this user exists
    SELECT per_hour INTO rate FROM token_rates r WHERE r.user_id = $1;
    IF rate IS NULL THEN
        raise notice 'User % does not have a rate configured', $1;
        RETURN FALSE;
    END IF;

    -- Lock the buckets until end of transaction
    LOCK TABLE token_buckets IN EXCLUSIVE MODE;

    -- Read current tokens and last take
    SELECT b.tokens, b.last_refill INTO tokens, last_refill FROM token_buckets b WHERE b.user_id = $1;
    IF tokens IS NULL THEN
        tokens := rate; -- Start with the max amount of tokens
        last_refill = now();
        raise notice 'Setting up a bucket for user % with % tokens', $1, tokens;
        INSERT INTO token_buckets VALUES ($1, tokens, last_refill);
    END IF;

    -- Calculate newly generated tokens since last call
    extra_tokens := floor(
        EXTRACT(EPOCH FROM (now() - last_refill) * rate / 3600.0)
    )::int;
    this_refill := last_refill + (extra_tokens * interval '1 second' * 3600.0 / rate);
    new_tokens := LEAST(rate, tokens + extra_tokens);
    raise notice 'User % has % tokens, last batch generated at %', $1, new_tokens, this_refill;

    -- If there are no tokens left then we don't need to do anything
    IF new_tokens <= 0 THEN
        RETURN FALSE;
    END IF;

    -- Set new values and return
    UPDATE token_buckets b SET (tokens, last_refill) = (new_tokens - 1, this_refill) WHERE b.user_id = $1;
    RETURN TRUE;
END
$$ LANGUAGE plpgsql;
`

// anchorPool installs the token bucket in a schema of its own, with a rate
// of 2·10^9 per hour (never binding here) for every key of ks, and returns
// a pool whose sessions find it, with NOTICEs off as its test does, and
// synchronous commits unless async.
func anchorPool(url, schema string, ks []string, async bool) (*pgxpool.Pool, error) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	q := pgx.Identifier{schema}.Sanitize()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer c.Close(ctx)
	var exists bool
	if err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", schema+".token_rates").Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		script := "CREATE SCHEMA " + q + "; SET search_path TO " + q + ";" + tokenBucketSQL
		if _, err := c.Exec(ctx, script, pgx.QueryExecModeSimpleProtocol); err != nil {
			return nil, err
		}
		if _, err := c.Exec(ctx, "INSERT INTO "+q+".token_rates SELECT unnest($1::text[]), 2000000000", ks); err != nil {
			return nil, err
		}
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.ConnConfig.RuntimeParams["client_min_messages"] = "warning"
	if async {
		cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	}
	cfg.MaxConns = 16
	return pgxpool.NewWithConfig(ctx, cfg)
}

// postgresAdmit compares one admission at a time from callers goroutines
// over nkeys keys: our Store.Admit (concurrent calls coalesced into one
// statement per round trip) and fafl/token-bucket-postgres's take_token
// (one call per admission on a pool of 16 connections), in the same
// server, once as published and once with its commits asynchronous as
// ours are.
func postgresAdmit(callers, nkeys int) func(r *reporter) {
	return func(r *reporter) {
		url, note := postgresURL()
		if url == "" {
			r.skip(note)
			return
		}
		ks := keys(nkeys)
		schema, anchorSchema := postgresSchema(os.Getpid())+"_admit", postgresSchema(os.Getpid())+"_anchor"
		defer dropSchema(url, schema)
		defer dropSchema(url, anchorSchema)
		pool, err := pgxpool.New(context.Background(), url)
		if err != nil {
			panic(err)
		}
		defer pool.Close()
		store, err := pgstore.New(pool, pgstore.Options{Schema: schema})
		if err != nil {
			panic(err)
		}
		defer store.Close()
		syncPool, err := anchorPool(url, anchorSchema, ks, false)
		if err != nil {
			panic(err)
		}
		defer syncPool.Close()
		asyncPool, err := anchorPool(url, anchorSchema, ks, true)
		if err != nil {
			panic(err)
		}
		defer asyncPool.Close()
		take := func(p *pgxpool.Pool) func(ctx context.Context, k string) error {
			return func(ctx context.Context, k string) error {
				var ok bool
				if err := p.QueryRow(ctx, "SELECT take_token($1)", k).Scan(&ok); err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("take_token refused")
				}
				return nil
			}
		}
		res := repeat(r.reps,
			contender{"ours", func() sample {
				return redisLoop(callers, ks, postgresTime, func(ctx context.Context, k string) error {
					d, err := store.Admit(ctx, driver.Request{Key: k, Limit: backendtest.Limit(postgresOpen), Cost: 1})
					if err == nil && !d.Allowed {
						err = fmt.Errorf("refused")
					}
					return err
				})
			}},
			contender{"anchor", func() sample { return redisLoop(callers, ks, postgresTime, take(syncPool)) }},
			contender{"anchor-async", func() sample { return redisLoop(callers, ks, postgresTime, take(asyncPool)) }},
		)
		const ours, anchor, anchorAsync = "pgstore Admit", "token-bucket-postgres take_token", "take_token, synchronous_commit off"
		tp := metricSpec{key: "admissions/s", label: "admissions", unit: "admissions/s", better: "higher"}
		if callers == 16 {
			a := summarize(res["anchor"], tp.key).Median
			tp.target = atLeast(5*a, "≥ 5× token-bucket-postgres")
		}
		r.compare(tp, ours, res["ours"], anchor, res["anchor"])
		r.compare(metricSpec{key: "admissions/s", label: "admissions, anchor's commits asynchronous too", unit: "admissions/s", better: "higher"},
			ours, res["ours"], anchorAsync, res["anchor-async"])
		r.compare(metricSpec{key: "p50-µs", label: "latency p50", unit: "µs", better: "lower"}, ours, res["ours"], anchor, res["anchor"])
		r.compare(metricSpec{key: "p99-µs", label: "latency p99", unit: "µs", better: "lower"}, ours, res["ours"], anchor, res["anchor"])
	}
}
