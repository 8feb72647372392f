package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", to count rows

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/cmdflag"
)

// A backend is an open store, what the soak samples of it, and how to
// release it all.
type backend struct {
	driver.Backend
	where     string // for the header: the file, server and prefix or schema
	resources []resource
	notes     []string // for the header: what is not judged, and why
	closers   []func() // run last first
}

func (b *backend) close() {
	for _, f := range slices.Backward(b.closers) {
		f()
	}
}

// openBackend opens the backend cfg names, its idle keys swept every
// cfg.sweep, and checks that it answers, so that an unreachable one is
// reported before anything runs.
func openBackend(ctx context.Context, cfg *config) (*backend, error) {
	b := new(backend)
	var err error
	switch cfg.backend {
	case "sqlite":
		err = b.openSQLite(cfg)
	case "redis":
		err = b.openRedis(ctx, cfg)
	case "postgres":
		err = b.openPostgres(ctx, cfg)
	default:
		var s *memstore.Store
		if s, err = memstore.New(memstore.Options{SweepInterval: cfg.sweep}); err == nil {
			b.Backend, b.where = s, "memory"
			b.closers = append(b.closers, func() { s.Close() })
		}
	}
	if err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *backend) openSQLite(cfg *config) error {
	path := cfg.sqlitePath
	if path == "" {
		dir, err := os.MkdirTemp("", "leakybucket-soak-")
		if err != nil {
			return fmt.Errorf("-backend sqlite: %v", err)
		}
		b.closers = append(b.closers, func() { os.RemoveAll(dir) })
		path = filepath.Join(dir, "buckets.db")
	}
	s, err := sqlitestore.Open(path, sqlitestore.Options{SweepInterval: cfg.sweep})
	if err != nil {
		return fmt.Errorf("-backend sqlite: %v", err)
	}
	b.closers = append(b.closers, func() { s.Close() })
	// A reader of its own counts the rows: in WAL mode it holds up no
	// writer.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return fmt.Errorf("-backend sqlite: %v", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	b.closers = append(b.closers, func() { db.Close() })
	b.Backend, b.where = s, "sqlite "+path
	size := func(p string) func(context.Context) (float64, error) {
		return func(context.Context) (float64, error) {
			fi, err := os.Stat(p)
			if errors.Is(err, os.ErrNotExist) {
				return 0, nil
			}
			if err != nil {
				return 0, err
			}
			return float64(fi.Size()), nil
		}
	}
	rows := func(table string) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			var n int64
			err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n)
			return float64(n), err
		}
	}
	b.resources = []resource{
		{name: "sqlite_file_bytes", bytes: true, judged: true, floor: 1 * mib, read: size(path)},
		{name: "sqlite_wal_bytes", bytes: true, judged: true, floor: 1 * mib, read: size(path + "-wal")},
		{name: "sqlite_rows", judged: true, floor: 1000, read: rows("buckets")},
		{name: "sqlite_leases", judged: true, floor: 100, read: rows("leases")},
	}
	return nil
}

func (b *backend) openRedis(ctx context.Context, cfg *config) error {
	opts, err := cmdflag.RedisOptions(cfg.redisAddr)
	if err != nil {
		return fmt.Errorf("-redis %q: %v", cfg.redisAddr, err)
	}
	redis.SetLogger(quietRedis{}) // go-redis logs to stderr by default
	client := redis.NewClient(opts)
	b.closers = append(b.closers, func() { client.Close() })
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		if rerr := redis.Error(nil); errors.As(err, &rerr) {
			return fmt.Errorf("-backend redis: Redis at %s refused us: %v", opts.Addr, err)
		}
		return fmt.Errorf("-backend redis: no Redis answers at %s (%v); start redis-server or point -redis at one", opts.Addr, err)
	}
	// Prefixes of the run's own keep its keys apart from other runs'; they
	// expire by themselves once their buckets are idle.
	run := runID()
	prefix, leasePrefix := "leakybucket-soak:"+run+":", "leakybucket-soak-leases:"+run+":"
	s, err := redisstore.New(client, redisstore.Options{Prefix: prefix, LeasePrefix: leasePrefix})
	if err != nil {
		return err
	}
	b.closers = append(b.closers, func() { s.Close() })
	b.Backend = s
	b.where = fmt.Sprintf("redis %s, keys %s* and %s*", opts.Addr, prefix, leasePrefix) // not the URL: it may hold a password
	b.resources = []resource{
		{name: "redis_used_memory_bytes", bytes: true, judged: true, floor: 1 * mib, read: func(ctx context.Context) (float64, error) {
			return redisUsedMemory(ctx, client)
		}},
		{name: "redis_keys", judged: true, floor: 1000, read: func(ctx context.Context) (float64, error) {
			return redisKeys(ctx, client, "leakybucket-soak*:"+run+":*")
		}},
	}
	return nil
}

// redisUsedMemory reads used_memory from INFO memory: the whole server's,
// which other clients of the same server move too.
func redisUsedMemory(ctx context.Context, c *redis.Client) (float64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			var n float64
			_, err := fmt.Sscan(v, &n)
			return n, err
		}
	}
	return 0, errors.New("redis: INFO memory has no used_memory")
}

// redisKeys counts the keys matching pattern with SCAN, which walks the
// whole keyspace a thousand keys a round trip without blocking the server.
func redisKeys(ctx context.Context, c *redis.Client, pattern string) (float64, error) {
	var n int
	iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		n++
	}
	return float64(n), iter.Err()
}

// runID returns a name of the run's own, for its Redis prefixes and its
// PostgreSQL schema.
func runID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// quietRedis drops go-redis's log lines, which would interleave with the
// soak's: a failure shows in the dispatcher's figures instead.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
