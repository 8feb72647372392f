package redisstore

import (
	"errors"

	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/redis/go-redis/v9"
)

// ErrUnavailable matches every error that reports Redis as unreachable or
// unable to serve (a network error, a timeout, LOADING, CLUSTERDOWN,
// READONLY, OOM...). It wraps the cause. Errors Redis returns for one key
// (a foreign value of another type under the prefix) do not match it.
var ErrUnavailable = errors.New("redisstore: redis unavailable")

// A FailurePolicy says what a Store answers while Redis is unavailable.
type FailurePolicy int

const (
	// FailClosed returns an error matching ErrUnavailable and admits
	// nothing. The caller (a dispatcher) retries later.
	FailClosed FailurePolicy = iota
	// FailOpen admits every request at once, without limit.
	FailOpen
	// FailLocal decides with an in-process bucket per key (memstore) with
	// the same limit until Redis answers again. Each process then admits
	// up to the limit on its own; the local buckets know nothing of what
	// Redis admitted before the failure, nor Redis of what they admitted,
	// so a key can pass its burst and quotas again once Redis is back.
	FailLocal
)

func (p FailurePolicy) String() string { return failover.Policy(p).String() }

func isNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

// isUnavailable reports whether err says Redis cannot serve at all, as
// opposed to an error about one key or script.
func isUnavailable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true // network, timeout, pool, closed client
	}
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN",
		"BUSY", "NOREPLICAS", "OOM", "MISCONF", "NOSCRIPT", "MOVED", "ASK",
		"max number of clients"} { // HasErrorPrefix drops an "ERR " prefix
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}
