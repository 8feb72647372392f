package netfault_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/leakybucket/leakybucket/internal/netfault"
	"github.com/leakybucket/leakybucket/internal/pgtest"
	"github.com/leakybucket/leakybucket/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(redistest.Exit),
		// go-redis retries a failed dial from a goroutine that sleeps up to a
		// second after its client is closed; it ends by itself.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
		// pgxpool's background health check ends a moment after Close.
		goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		// toxiproxy v2.5.0's reset_peer toxic returns after the first bytes
		// it resets, and the stage before it, a no-op, blocks for ever on
		// sending it the next bytes: a goroutine of the proxy per reset
		// connection, never one of the stores or their clients.
		goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"))
}

// Client settings, as docs/redis.md and docs/postgres.md advise: no
// retries, and timeouts above a healthy round trip's p99 (a millisecond
// on loopback), short enough that a black hole of 600ms is found out
// while it lasts. The pool is bounded, so that a leak of connections
// shows. (TestSlowNetwork's timeouts are longer, to suit its faults.)
const (
	readTimeout = 300 * time.Millisecond
	maxConns    = 8
)

// A backend is a kind of store whose server the tests reach through a
// Proxy, and the failure policies they run it under.
type backend struct {
	name        string
	unavailable error // the store's ErrUnavailable
	open        func(t *testing.T, o options) *served
	policies    []failover.Policy
}

// options are a store's: its failure policy, its RetryInterval (0: the
// default, 500ms) and the timeout of its round trips (0: readTimeout).
type options struct {
	policy  failover.Policy
	retry   time.Duration
	timeout time.Duration
}

// PostgreSQL's runs take several times as long as Redis's (a schema
// each, slower round trips), and FailOpen's answers are the same code
// (internal/failover) for both stores: Redis alone runs it.
var backends = []backend{
	{"redis", redisstore.ErrUnavailable, openRedis, []failover.Policy{failover.FailClosed, failover.FailOpen, failover.FailLocal}},
	{"postgres", pgstore.ErrUnavailable, openPostgres, []failover.Policy{failover.FailClosed, failover.FailLocal}},
}

// A served store reaches its server through proxy.
type served struct {
	store driver.BatchBackend
	proxy *netfault.Proxy
	// conns counts the connections the server holds from the store's
	// client, asking the server directly.
	conns func(t *testing.T) int
	// close closes the store, then its client. Both are closed at the
	// end of the test in any case.
	close func()
}

// openRedis opens a redisstore.Store through a proxy to the Redis the
// tests share, under its own prefix. Its client names its connections,
// so that CLIENT LIST finds them.
func openRedis(t *testing.T, o options) *served {
	if o.timeout == 0 {
		o.timeout = readTimeout
	}
	addr := redistest.Addr(t)
	p := netfault.Start(t, addr)
	name := fmt.Sprintf("netfault-%08x", rand.Uint32())
	c := redis.NewClient(&redis.Options{
		Addr:       p.Addr(),
		ClientName: name,
		// The proxy accepts every connection, so only a loaded machine
		// makes a dial slow; one that timed out would count towards
		// go-redis's breaker, which stops dialing for a second after 8.
		DialTimeout:      time.Second,
		DialerRetries:    1,
		MaxRetries:       -1,
		ReadTimeout:      o.timeout,
		WriteTimeout:     o.timeout,
		PoolSize:         maxConns,
		MaxActiveConns:   maxConns,
		PipelinePoolSize: -1, // pipelines on the one pool, so that maxConns bounds all
	})
	s, err := redisstore.New(c, redisstore.Options{
		Prefix:        fmt.Sprintf("lbtest:%s:%08x:", t.Name(), rand.Uint32()),
		FailurePolicy: redisstore.FailurePolicy(o.policy),
		RetryInterval: o.retry,
	})
	require.NoError(t, err)
	warmUp(t, s)
	closeAll := func() {
		s.Close()
		c.Close()
	}
	t.Cleanup(closeAll)
	return &served{
		store: s,
		proxy: p,
		conns: func(t *testing.T) int {
			list, err := redistest.Do(addr, "CLIENT", "LIST")
			require.NoError(t, err, "CLIENT LIST")
			return strings.Count(list, " name="+name+" ")
		},
		close: closeAll,
	}
}

// openPostgres opens a pgstore.Store through a proxy to the PostgreSQL
// the tests share, in a schema of its own. Its pool names its sessions
// (application_name), so that pg_stat_activity finds them.
func openPostgres(t *testing.T, o options) *served {
	if o.timeout == 0 {
		o.timeout = readTimeout
	}
	direct := pgtest.URL(t)
	u, err := url.Parse(direct)
	require.NoError(t, err)
	p := netfault.Start(t, u.Host)
	name := fmt.Sprintf("netfault-%08x", rand.Uint32())
	u.Host = p.Addr()
	q := u.Query()
	q.Set("connect_timeout", "1")
	q.Set("application_name", name)
	q.Set("pool_max_conns", fmt.Sprint(maxConns))
	u.RawQuery = q.Encode()
	schema := pgtest.Schema(t, direct)
	install(t, direct, schema)
	pool, err := pgxpool.New(context.Background(), u.String())
	require.NoError(t, err)
	s, err := pgstore.New(pool, pgstore.Options{
		Schema:        schema,
		FailurePolicy: pgstore.FailurePolicy(o.policy),
		RetryInterval: o.retry,
		Timeout:       o.timeout,
	})
	require.NoError(t, err)
	warmUp(t, s)
	closeAll := func() {
		s.Close()
		pool.Close()
	}
	t.Cleanup(closeAll)
	return &served{
		store: s,
		proxy: p,
		conns: func(t *testing.T) int {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, direct)
			require.NoError(t, err)
			defer c.Close(ctx)
			var n int
			require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name).Scan(&n))
			return n
		},
		close: closeAll,
	}
}

// install installs pgstore's schema on the server at url, without the
// proxy and with the default timeout: the first call through the proxy
// then only reads its version.
func install(t *testing.T, url, schema string) {
	pool := pgtest.Pool(t, url)
	s, err := pgstore.New(pool, pgstore.Options{Schema: schema})
	require.NoError(t, err)
	defer s.Close()
	warmUp(t, s)
	pool.Close()
}

// settleConns waits until the server holds at most want connections of
// s's client and returns how many it holds: the proxy closes a
// connection's server side a moment after its client side.
func settleConns(t *testing.T, s *served, want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := s.conns(t)
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// warmUp waits until s's server has decided an admission, so that the
// tests begin with the server's state in place (pgstore's schema,
// redisstore's script) and connections open: installing pgstore's schema
// through the proxy can outlast the short timeout of a round trip, and
// the store then answers by its policy until RetryInterval has passed.
func warmUp(t *testing.T, s driver.Backend) {
	t.Helper()
	req := driver.Request{Key: "warm-up", Limit: backendtest.Limit(bucket.PerSecond(1000)), Cost: 1}
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := s.Admit(context.Background(), req)
		if err == nil && d.Allowed && d.Booking.TAT > 0 {
			return
		}
		require.True(t, time.Now().Before(deadline), "no admission by the server within 10s: %v", err)
		time.Sleep(10 * time.Millisecond)
	}
}
