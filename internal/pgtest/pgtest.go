// Package pgtest provides PostgreSQL to tests: the server named by
// LEAKYBUCKET_POSTGRES_URL (default the local one on 127.0.0.1:5432),
// with a schema of each test's own, and clusters a test starts itself
// (initdb, pg_ctl) to stop and restart. Without a server, tests skip with
// a message, unless LEAKYBUCKET_REQUIRE_POSTGRES=1, where they fail.
//
// Tests isolate themselves with schemas of their own, dropped at their
// end, so that one server serves many packages at once.
package pgtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Environment variables read by this package.
const (
	// EnvURL names the server, as a connection URL.
	EnvURL = "LEAKYBUCKET_POSTGRES_URL"
	// EnvRequire, set to 1, turns every skip for want of PostgreSQL (or
	// of its programs, for Start and pgbouncer) into a failure (CI sets
	// it).
	EnvRequire = "LEAKYBUCKET_REQUIRE_POSTGRES"
)

// DefaultURL is the server tests use when EnvURL is not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// URL returns the server's URL after checking that it answers; otherwise
// it skips t (or fails it, see EnvRequire).
func URL(t testing.TB) string {
	t.Helper()
	url := os.Getenv(EnvURL)
	if url == "" {
		url = DefaultURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err == nil {
		err = c.Ping(ctx)
		c.Close(ctx)
	}
	if err != nil {
		Unavailable(t, fmt.Errorf("%s: %w", url, err))
	}
	return url
}

// Unavailable skips t for want of what err names, or fails it when
// EnvRequire is set.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("pgtest: %v, and %s=1", err, EnvRequire)
	}
	t.Skipf("pgtest: skipping, no PostgreSQL (set %s): %v", EnvURL, err)
}

// Pool returns a pool on url, closed at the end of t.
func Pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("pgtest: pool on %s: %v", url, err)
	}
	t.Cleanup(p.Close)
	return p
}

// Schema returns the name of a schema of t's own, dropped from url's
// database at the end of t.
func Schema(t testing.TB, url string) string {
	t.Helper()
	name := fmt.Sprintf("lbtest_%s_%08x", strings.ToLower(nonWord.ReplaceAllString(t.Name(), "_")), rand.Uint32())
	if len(name) > 63 {
		name = name[len(name)-63:]
	}
	t.Cleanup(func() { DropSchema(t, url, name) })
	return name
}

var nonWord = regexp.MustCompile(`\W+`)

// DropSchema drops schema and everything in it, if url answers.
func DropSchema(t testing.TB, url, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("pgtest: dropping schema %s: %v", schema, err)
	}
}

// Bin returns the path of a PostgreSQL server program (initdb, pg_ctl,
// postgres): on PATH, in /usr/local/bin or in the newest
// /usr/lib/postgresql/*/bin.
func Bin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		p := filepath.Join(dirs[i], name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/lib/postgresql/*/bin", name)
}
