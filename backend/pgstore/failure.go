package pgstore

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/leakybucket/leakybucket/internal/failover"
)

// ErrUnavailable matches every error that reports PostgreSQL as
// unreachable or unable to serve: a network error, a failed connection,
// a timeout, the server shutting down or starting up, too many
// connections, a read-only standby. It wraps the cause. Errors about a
// request do not match it.
var ErrUnavailable = errors.New("pgstore: postgres unavailable")

// A FailurePolicy says what a Store answers while PostgreSQL is
// unavailable. The policies are redisstore's.
type FailurePolicy int

const (
	// FailClosed returns an error matching ErrUnavailable and admits
	// nothing. The caller (a dispatcher) retries later.
	FailClosed FailurePolicy = iota
	// FailOpen admits every request at once, without limit.
	FailOpen
	// FailLocal decides with an in-process bucket per key (memstore) with
	// the same limit until PostgreSQL answers again. Each process then
	// admits up to the limit on its own; the local buckets know nothing
	// of what the database admitted before the failure, nor the database
	// of what they admitted, so a key can pass its burst and quotas again
	// once the database is back.
	FailLocal
)

func (p FailurePolicy) String() string { return failover.Policy(p).String() }

// isUnavailable reports whether err says PostgreSQL cannot serve at all,
// as opposed to an error about one statement.
func isUnavailable(err error) bool {
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true // network, timeout, closed pool
	}
	if len(pgErr.Code) != 5 {
		return false
	}
	switch pgErr.Code[:2] {
	case "08", // connection exception
		"53", // insufficient resources: too many connections, disk full
		"58": // system error: I/O
		return true
	}
	switch pgErr.Code {
	case "57P01", "57P02", "57P03", // shutting down, crashed, starting up
		"25006": // read-only transaction: a standby
		return true
	}
	return false
}
