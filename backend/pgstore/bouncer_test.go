package pgstore_test

import (
	"testing"

	"github.com/leakybucket/leakybucket/backend/pgstore"
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
