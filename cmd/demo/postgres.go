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
)

// postgresSchema is the run's schema: its buckets, shared with its
// workers, kept apart from other runs' and dropped at its end.
func postgresSchema(cfg *config) string {
	return "leakybucket_demo_" + strings.Trim(strings.TrimPrefix(cfg.prefix, "leakybucket-demo:"), ":")
}

func openPostgres(ctx context.Context, cfg *config) (*store, error) {
	pc, err := pgxpool.ParseConfig(cfg.postgresURL)
	if err != nil {
		return nil, fmt.Errorf("-postgres: %v", err)
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = 2 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("-postgres: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	addr := fmt.Sprintf("%s:%d", pc.ConnConfig.Host, pc.ConnConfig.Port)
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
			return nil, fmt.Errorf("-backend postgres: PostgreSQL at %s refused us: %s", addr, connectError(err))
		}
		return nil, fmt.Errorf("-backend postgres: no PostgreSQL answers at %s (%s); start it or point -postgres at one", addr, connectError(err))
	}
	s, err := pgstore.New(pool, pgstore.Options{Schema: postgresSchema(cfg)})
	if err != nil {
		pool.Close()
		return nil, err
	}
	// The first call installs the run's schema. A server that cannot take
	// it (a standby, a role without CREATE) fails every admission, which
	// the dispatcher retries, in silence, until Ctrl-C: say so now. A
	// pause of nothing writes nothing.
	if err := s.Pause(ctx, "leakybucket-demo-check", 0); err != nil {
		s.Close()
		pool.Close()
		return nil, fmt.Errorf("-backend postgres: cannot use PostgreSQL at %s: %s", addr, connectError(err))
	}
	return &store{s, func() { s.Close(); pool.Close() }}, nil
}

// connectError is err on one line. pgx reports each attempt to connect on
// a line of its own (two with the default sslmode, prefer: TLS, then
// not), and the demo's one-line message would keep only the first line,
// which names no cause; the same cause twice is said once.
func connectError(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(parts, l) {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}

// dropPostgresSchema drops the run's schema, once its processes are done.
func dropPostgresSchema(cfg *config) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, cfg.postgresURL)
	if err != nil {
		cfg.logger.Debug("postgres: dropping the run's schema", "err", err)
		return
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{postgresSchema(cfg)}.Sanitize()+" CASCADE"); err != nil {
		cfg.logger.Debug("postgres: dropping the run's schema", "err", err)
	}
}
