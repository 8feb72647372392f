// Package cmdflag reads the flags of the module's commands (cmd/demo,
// cmd/soak) alike: the backend's flags with the same names and defaults,
// whole numbers refused in the same words, -help on stdout, and any other
// mistake as one line naming the flag.
package cmdflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Int is a flag.Value holding a whole number: fs.Var((*cmdflag.Int)(&n),
// …). A value that is not one is refused with "want a whole number".
type Int int

// String implements flag.Value.
func (c *Int) String() string { return strconv.Itoa(int(*c)) }

// Set implements flag.Value.
func (c *Int) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want a whole number")
	}
	*c = Int(n)
	return nil
}

// Parse parses args with fs, which belongs to the command fs.Name(). -help
// writes usage(fs, stdout) and returns flag.ErrHelp; any other error is
// one line naming the flag, and so is an argument that is not a flag. If
// fs has the flags BackendFlags defines, Parse checks them: a backend it
// knows, a -redis and a -postgres that read, and no other backend's flag
// given, which would do nothing. It returns the names of the flags args
// set.
func Parse(fs *flag.FlagSet, args []string, usage func(*flag.FlagSet, io.Writer), stdout io.Writer) (map[string]bool, error) {
	name := fs.Name()
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, stdout)
			return nil, err
		}
		return nil, fmt.Errorf("%v (run %s -help for the flags)", err, name)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: %s takes flags only (run %s -help)", fs.Arg(0), name, name)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if fs.Lookup("backend") != nil {
		value := func(name string) string { return fs.Lookup(name).Value.String() }
		if err := checkBackend(set, value("backend"), value("redis"), value("postgres")); err != nil {
			return nil, err
		}
	}
	return set, nil
}

// DefaultPostgresURL is -postgres's default: a local server as Debian's
// packages set it up, with trust authentication.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// BackendFlags defines on fs the flags that choose a backend and say where
// its state lives, -backend, -sqlite, -redis and -postgres, with the same
// defaults and help in every command, into the variables given.
func BackendFlags(fs *flag.FlagSet, kind, sqlitePath, redisAddr, postgresURL *string) {
	fs.StringVar(kind, "backend", "memory", "where bucket state lives, a `kind`: memory, sqlite, redis or postgres")
	fs.StringVar(sqlitePath, "sqlite", "", "database `file` for -backend sqlite (default: a new file in the temp dir, removed after the run)")
	fs.StringVar(redisAddr, "redis", "127.0.0.1:6379", "Redis `address` or redis:// URL for -backend redis (the run's keys have a prefix of their own)")
	fs.StringVar(postgresURL, "postgres", DefaultPostgresURL, "PostgreSQL connection `URL` for -backend postgres (the run's buckets live in a schema of its own, dropped at its end)")
}

// checkBackend checks the flags BackendFlags defined; set holds the
// names of the flags given.
func checkBackend(set map[string]bool, kind, redisAddr, postgresURL string) error {
	for _, name := range []string{"sqlite", "redis", "postgres"} {
		if set[name] && name != kind {
			return fmt.Errorf("-%s applies only with -backend %s (this run uses -backend %s)", name, name, kind)
		}
	}
	switch kind {
	case "memory", "sqlite":
	case "redis":
		if _, err := RedisOptions(redisAddr); err != nil {
			return fmt.Errorf("-redis %q: %v", redisAddr, err)
		}
	case "postgres":
		if _, err := pgxpool.ParseConfig(postgresURL); err != nil {
			return fmt.Errorf("-postgres: %v", err)
		}
	default:
		return fmt.Errorf("-backend %q: want memory, sqlite, redis or postgres", kind)
	}
	return nil
}

// RedisOptions reads -redis: a redis:// or rediss:// URL, or host[:port]
// (port 6379 if none is given).
func RedisOptions(addr string) (*redis.Options, error) {
	if strings.Contains(addr, "://") {
		return redis.ParseURL(addr)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		if addr == "" || strings.Contains(addr, "/") {
			return nil, errors.New("want host:port or a redis:// URL")
		}
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), "6379")
	}
	return &redis.Options{Addr: addr, DialTimeout: 2 * time.Second}, nil
}
