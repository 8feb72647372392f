package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/internal/faulttest"
)

// deadPool returns a pool of a loopback port nobody listens on.
func deadPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	p, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&connect_timeout=1", addr))
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

func TestFailClosed(t *testing.T) {
	faulttest.FailClosed(t, down(t, newStore(t, deadPool(t), pgstore.Options{Schema: "unused"})))
}

func TestFailOpen(t *testing.T) {
	faulttest.FailOpen(t, down(t, newStore(t, deadPool(t), pgstore.Options{Schema: "unused", FailurePolicy: pgstore.FailOpen, RetryInterval: -1})))
}

func TestFailLocal(t *testing.T) {
	faulttest.FailLocal(t, down(t, newStore(t, deadPool(t), pgstore.Options{Schema: "unused", FailurePolicy: pgstore.FailLocal})))
}

func down(t *testing.T, s *pgstore.Store) faulttest.Down {
	return faulttest.Down{Store: s, Unavailable: pgstore.ErrUnavailable, Cause: new(*pgconn.ConnectError), IsLocal: pgstore.IsLocal}
}

// TestIsUnavailable: the errors that say PostgreSQL cannot serve at all
// count as unavailable; an error about a statement does not.
func TestIsUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, true},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, true},
		{&pgconn.PgError{Code: "53300", Message: "sorry, too many clients already"}, true},
		{&pgconn.PgError{Code: "08006", Message: "connection failure"}, true},
		{&pgconn.PgError{Code: "25006", Message: "cannot execute UPDATE in a read-only transaction"}, true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{context.DeadlineExceeded, true}, // the Store's own Timeout
		{&pgconn.PgError{Code: "42883", Message: "function decide_v1 does not exist"}, false},
		{&pgconn.PgError{Code: "22003", Message: "bigint out of range"}, false},
	} {
		assert.Equal(t, tc.want, pgstore.IsUnavailable(tc.err), "IsUnavailable(%v)", tc.err)
	}
}
