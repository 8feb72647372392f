package pgstore_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

// TestPgBouncer runs the conformance suite through PgBouncer in
// transaction mode, with pools in pgx's default mode, which prepares and
// caches statements: the Store must neither keep prepared statements nor
// session state beyond a transaction.
func TestPgBouncer(t *testing.T) {
	url := pgtest.Bouncer(t, pgtest.URL(t))
	conformance(t, url, pgstore.Options{})
}

// TestNoDescriptionCache: a pool whose connections cache no statement
// descriptions still works (the Store sends its arguments in text).
func TestNoDescriptionCache(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	require.NoError(t, err)
	cfg.ConnConfig.DescriptionCacheCapacity = 0
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeDescribeExec
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	s := newStore(t, pool, pgstore.Options{})
	for i := range 3 {
		d, err := s.Admit(context.Background(), driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(2).WithBurst(2)), Cost: 1})
		require.NoError(t, err, "Admit %d", i)
		assert.Equal(t, i < 2, d.Allowed, "Admit %d of a burst of 2", i)
	}
}
