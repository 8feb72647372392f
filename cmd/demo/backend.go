package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/cmdflag"
)

// A store is an open backend and how to release it. Hand the Backend on,
// not the store: a *store has only driver.Backend's methods, and would
// hide those of a driver.LeaseBackend, which -inflight needs.
type store struct {
	driver.Backend
	close func()
}

// openBackend opens the backend cfg names and checks that it answers, so
// that an unreachable one is reported before anything runs.
func openBackend(ctx context.Context, cfg *config) (*store, error) {
	switch cfg.backend {
	case "sqlite":
		s, err := sqlitestore.Open(cfg.sqlitePath, sqlitestore.Options{})
		if err != nil {
			return nil, fmt.Errorf("-backend sqlite: %v", err)
		}
		return &store{s, func() { s.Close() }}, nil
	case "redis":
		return openRedis(ctx, cfg)
	case "postgres":
		return openPostgres(ctx, cfg)
	}
	s, err := memstore.New(memstore.Options{})
	if err != nil {
		return nil, err
	}
	return &store{s, func() { s.Close() }}, nil
}

func openRedis(ctx context.Context, cfg *config) (*store, error) {
	opts, err := cmdflag.RedisOptions(cfg.redisAddr)
	if err != nil {
		return nil, fmt.Errorf("-redis %q: %v", cfg.redisAddr, err)
	}
	redis.SetLogger(redisLogger{cfg.logger}) // go-redis logs to stderr by default
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		if rerr := redis.Error(nil); errors.As(err, &rerr) {
			return nil, fmt.Errorf("-backend redis: Redis at %s refused us: %v", opts.Addr, err)
		}
		return nil, fmt.Errorf("-backend redis: no Redis answers at %s (%v); start redis-server or point -redis at one", opts.Addr, err)
	}
	s, err := redisstore.New(client, redisstore.Options{Prefix: cfg.prefix})
	if err != nil {
		client.Close()
		return nil, err
	}
	return &store{s, func() { s.Close(); client.Close() }}, nil
}

// newPrefix returns a Redis key prefix of its own for one run, so that
// runs sharing a Redis (and tests running at once) keep their buckets
// apart. Keys expire on their own once their buckets are idle.
func newPrefix() string {
	var b [4]byte
	rand.Read(b[:])
	return "leakybucket-demo:" + hex.EncodeToString(b[:]) + ":"
}

// redisLogger passes go-redis's log lines to slog at Debug: with -v they
// show, otherwise they would garble the progress display.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
