package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// openPostgres opens a pgstore in a schema of the run's own, swept every
// cfg.sweep and dropped when the backend is closed.
func (b *backend) openPostgres(ctx context.Context, cfg *config) error {
	pc, err := pgxpool.ParseConfig(cfg.postgresURL)
	if err != nil {
		return fmt.Errorf("-postgres: %v", err)
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = 2 * time.Second
	}
	addr := fmt.Sprintf("%s:%d", pc.ConnConfig.Host, pc.ConnConfig.Port) // not the URL: it may hold a password
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return fmt.Errorf("-postgres: %v", err)
	}
	b.closers = append(b.closers, pool.Close)
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
			return fmt.Errorf("-backend postgres: PostgreSQL at %s refused us: %s", addr, oneLine(err))
		}
		return fmt.Errorf("-backend postgres: no PostgreSQL answers at %s (%s); start it or point -postgres at one", addr, oneLine(err))
	}
	schema := "leakybucket_soak_" + runID()
	s, err := pgstore.New(pool, pgstore.Options{Schema: schema, SweepInterval: cfg.sweep})
	if err != nil {
		return err
	}
	b.closers = append(b.closers, func() { dropSchema(pool, schema) }, func() { s.Close() })
	// The first call installs the schema: a server that cannot take it (a
	// standby, a role without CREATE) is reported now rather than as
	// backend errors all run long. A pause of nothing writes nothing.
	if err := s.Pause(pctx, "leakybucket-soak-check", 0); err != nil {
		return fmt.Errorf("-backend postgres: cannot use PostgreSQL at %s: %s", addr, oneLine(err))
	}
	b.Backend = s
	b.where = fmt.Sprintf("postgres %s, schema %s", addr, schema)
	judgeSize, why, err := judgeTableSize(pctx, pool, cfg.warmup)
	if err != nil {
		return fmt.Errorf("-backend postgres: reading the autovacuum settings: %s", oneLine(err))
	}
	if !judgeSize {
		b.notes = append(b.notes, "pg_relation_bytes is not judged: "+why)
	}
	quoted := pgx.Identifier{schema}.Sanitize()
	rows := func(table string) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			var n int64
			err := pool.QueryRow(ctx, "SELECT count(*) FROM "+quoted+"."+table).Scan(&n)
			return float64(n), err
		}
	}
	b.resources = []resource{
		{name: "pg_relation_bytes", bytes: true, judged: judgeSize, floor: 1 * mib, read: func(ctx context.Context) (float64, error) {
			var n int64
			err := pool.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
				FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = $1 AND c.relkind = 'r'`, schema).Scan(&n)
			return float64(n), err
		}},
		{name: "pg_rows", judged: true, floor: 1000, read: rows("buckets")},
	}
	if _, ok := b.Backend.(driver.LeaseBackend); ok {
		b.resources = append(b.resources, resource{name: "pg_leases", judged: true, floor: 100, read: rows("leases")})
	}
	return nil
}

// judgeTableSize reports whether the size of the run's tables can be
// judged: the dead row versions of updated and deleted rows are reclaimed
// by autovacuum alone (docs/postgres.md), so the size settles only once
// autovacuum has run, which it does once a naptime (a minute by default)
// when it is on at all. It is judged if autovacuum is on and the warm-up
// spans two naptimes; otherwise why says why not.
func judgeTableSize(ctx context.Context, pool *pgxpool.Pool, warmup time.Duration) (ok bool, why string, err error) {
	var on bool
	var naptime int64 // seconds
	err = pool.QueryRow(ctx, `SELECT current_setting('autovacuum')::bool,
		(SELECT setting::bigint FROM pg_settings WHERE name = 'autovacuum_naptime')`).Scan(&on, &naptime)
	switch nap := time.Duration(naptime) * time.Second; {
	case err != nil:
		return false, "", err
	case !on:
		return false, "autovacuum is off on this server, and the table keeps the dead rows of updates and deletes until a vacuum (docs/postgres.md)", nil
	case warmup < 2*nap:
		return false, fmt.Sprintf("the table settles once autovacuum has run, every autovacuum_naptime (%v): give a -warmup of %v or more", nap, 2*nap), nil
	}
	return true, "", nil
}

// dropSchema drops the run's schema once its store is closed.
func dropSchema(pool *pgxpool.Pool, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

// oneLine is err on one line: pgx reports each attempt to connect on a
// line of its own, and the same cause twice is said once.
func oneLine(err error) string {
	var parts []string
	for l := range strings.Lines(err.Error()) {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(parts, l) {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}
