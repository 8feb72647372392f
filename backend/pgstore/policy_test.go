package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
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
	s := newStore(t, deadPool(t), pgstore.Options{Schema: "unused"})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(10)), Cost: 1}
	for i := range 3 { // the first asks PostgreSQL, the others find it known down
		_, err := s.Admit(ctx, req)
		assert.ErrorIs(t, err, pgstore.ErrUnavailable, "Admit %d without PostgreSQL", i)
		var connErr *pgconn.ConnectError
		assert.ErrorAs(t, err, &connErr, "Admit %d without PostgreSQL: want ErrUnavailable wrapping the *pgconn.ConnectError", i)
	}
	assert.ErrorIs(t, s.Pause(ctx, "k", time.Second), pgstore.ErrUnavailable, "Pause without PostgreSQL")
	batch := []driver.Admission{{Request: req}, {Request: req}}
	s.AdmitBatch(ctx, batch)
	for i, a := range batch {
		assert.ErrorIs(t, a.Err, pgstore.ErrUnavailable, "AdmitBatch[%d] without PostgreSQL", i)
	}
}

func TestFailOpen(t *testing.T) {
	s := newStore(t, deadPool(t), pgstore.Options{Schema: "unused", FailurePolicy: pgstore.FailOpen, RetryInterval: -1})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	for i := range 3 {
		d, err := s.Admit(ctx, req)
		require.NoError(t, err, "Admit %d without PostgreSQL, FailOpen", i)
		require.True(t, d.Allowed, "Admit %d without PostgreSQL, FailOpen", i)
		require.Zero(t, d.Wait, "Admit %d without PostgreSQL, FailOpen: want allowed at once", i)
		assert.NoError(t, s.Refund(ctx, req, d), "Refund of an open admission")
	}
	assert.NoError(t, s.Pause(ctx, "k", time.Second), "Pause without PostgreSQL, FailOpen")
}

func TestFailLocal(t *testing.T) {
	s := newStore(t, deadPool(t), pgstore.Options{Schema: "unused", FailurePolicy: pgstore.FailLocal})
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(2)), Cost: 1, MaxWait: 2 * time.Hour}
	d1, err := s.Admit(ctx, req)
	require.NoError(t, err, "Admit without PostgreSQL, FailLocal")
	require.True(t, d1.Allowed, "Admit without PostgreSQL, FailLocal")
	require.True(t, pgstore.IsLocal(d1), "Admit without PostgreSQL, FailLocal: want allowed locally")
	now := time.Now()
	assert.WithinRange(t, time.Unix(0, d1.Now), now.Add(-time.Minute), now, "local decision's Now: want Unix time like the database's")
	s.Admit(ctx, req)
	d3, _ := s.Admit(ctx, req)
	require.True(t, d3.Allowed, "third admission of burst 2 at 1/h: want booked an hour ahead")
	require.GreaterOrEqual(t, d3.Wait, 59*time.Minute, "third admission of burst 2 at 1/h: want booked an hour ahead")
	require.NoError(t, s.Refund(ctx, req, d3))
	d4, _ := s.Admit(ctx, req)
	assert.Equal(t, d3.Start(), d4.Start(), "next start after refunding the latest booking: want the refunded one's")
	assert.NoError(t, s.Pause(ctx, "p", time.Hour), "Pause without PostgreSQL, FailLocal")
	d, _ := s.Admit(ctx, driver.Request{Key: "p", Limit: backendtest.Limit(bucket.PerSecond(100)), Cost: 1})
	assert.False(t, d.Allowed, "local bucket admitted during a pause")
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
