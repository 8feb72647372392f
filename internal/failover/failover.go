// Package failover is what a store that shares buckets through a server
// (Redis, PostgreSQL) answers while the server is unavailable: the failure
// policies, the interval during which the server is not asked, and the
// local buckets of FailLocal. redisstore and pgstore each export their own
// FailurePolicy, with these semantics.
package failover

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A Policy says what to answer while the server is unavailable.
type Policy int

const (
	// FailClosed returns an error matching Config.Unavailable.
	FailClosed Policy = iota
	// FailOpen admits every request at once, without limit.
	FailOpen
	// FailLocal decides with an in-process bucket per key.
	FailLocal
)

// String returns the policy's name, as the stores' constants are named.
func (p Policy) String() string {
	switch p {
	case FailClosed:
		return "FailClosed"
	case FailOpen:
		return "FailOpen"
	case FailLocal:
		return "FailLocal"
	}
	return fmt.Sprintf("FailurePolicy(%d)", int(p))
}

// Config configures a Guard.
type Config struct {
	Policy Policy
	// Retry is how long after a failure the server is not asked; then
	// one call at a time asks again until one succeeds. 0 or less asks
	// on every call.
	Retry time.Duration
	// Unavailable is the store's sentinel error, which the errors of
	// FailClosed wrap together with the failure.
	Unavailable error
	// IsUnavailable reports whether an error says the server cannot serve
	// at all, as opposed to an error about one request.
	IsUnavailable func(error) bool
	// Name starts the messages of errors about one key ("redisstore").
	Name string
}

// A Guard keeps what a store knows of its server's availability and
// answers by the policy while it is down. It is safe for concurrent use.
type Guard struct {
	cfg Config

	local     *memstore.Store // FailLocal only
	localBase int64           // Unix ns of local's clock zero

	node Node // the server's, for Ask and Settle
}

// A Node is what a Guard knows of one server's availability: a store of
// one server keeps the Guard's own (Ask, Settle), a store of a Redis
// Cluster one per master (AskNode, SettleNode). The zero Node is up. It
// is safe for concurrent use.
type Node struct {
	downUntil atomic.Int64 // Unix ns; 0 while the server answers
	probing   atomic.Bool
	lastErr   atomic.Pointer[error]
}

// Err returns the failure that made n down last, or nil if none has. A
// nil Node has none.
func (n *Node) Err() error {
	if n == nil {
		return nil
	}
	if p := n.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Up reports whether n's server answers, as far as its Guard knows.
func (n *Node) Up() bool { return n.downUntil.Load() == 0 }

// New returns a Guard; with FailLocal it starts a memstore, which Close
// stops.
func New(cfg Config) (*Guard, error) {
	if cfg.Policy < FailClosed || cfg.Policy > FailLocal {
		return nil, fmt.Errorf("%s: unknown FailurePolicy %d", cfg.Name, int(cfg.Policy))
	}
	g := &Guard{cfg: cfg}
	if cfg.Policy == FailLocal {
		base := time.Now()
		local, err := memstore.New(memstore.Options{})
		if err != nil {
			return nil, err
		}
		g.local, g.localBase = local, base.UnixNano()
	}
	return g, nil
}

// Close stops the local buckets, if any.
func (g *Guard) Close() {
	if g.local != nil {
		g.local.Close()
	}
}

// Ask reports whether to send a call to the server: always while it
// answers; after a failure, not until Retry has passed, and then for one
// probing call at a time, which must be settled with probe true.
func (g *Guard) Ask() (ask, probe bool) { return g.AskNode(&g.node) }

// AskNode is Ask for the server n stands for.
func (g *Guard) AskNode(n *Node) (ask, probe bool) {
	until := n.downUntil.Load()
	if until == 0 || g.cfg.Retry <= 0 {
		return true, false
	}
	if time.Now().UnixNano() < until {
		return false, false
	}
	if n.probing.CompareAndSwap(false, true) {
		return true, true
	}
	return false, false
}

// Settle updates what the Guard knows of the server after a call that
// ended with err: the server's answer or failure, or a caller's ctx error
// or ErrClosed, which say nothing about the server (see Outage).
func (g *Guard) Settle(err error, probe bool) { g.SettleNode(&g.node, err, probe) }

// SettleNode is Settle for the server n stands for.
func (g *Guard) SettleNode(n *Node, err error, probe bool) {
	switch {
	case err == nil || !g.cfg.IsUnavailable(err):
		// The server answered, perhaps with an error about this key.
		if n.downUntil.Load() != 0 {
			n.downUntil.Store(0)
		}
	case g.Outage(err):
		e := err
		n.lastErr.Store(&e)
		n.downUntil.Store(time.Now().Add(g.cfg.Retry).UnixNano())
	}
	if probe {
		n.probing.Store(false)
	}
}

// Outage reports whether a call that ended with err found the server
// unavailable. A caller's ctx error or ErrClosed says nothing about the
// server; they are told apart by identity: round trips never depend on a
// caller's ctx, and a network error may match context.DeadlineExceeded
// (net's dial timeout does).
func (g *Guard) Outage(err error) bool {
	return err != nil && g.cfg.IsUnavailable(err) &&
		err != context.Canceled && err != context.DeadlineExceeded && err != driver.ErrClosed
}

// Idle reports whether nothing depends on what the Guard knows of n any
// more: n is up, or no call has asked about it since its probe was due,
// for Retry at least, and none probes it. A store may then forget n.
func (g *Guard) Idle(n *Node) bool {
	until := n.downUntil.Load()
	return until == 0 || !n.probing.Load() && time.Now().UnixNano() >= until+max(g.cfg.Retry, 0).Nanoseconds()
}

// ErrAnswer answers an admission that failed with err: ctx's error if ctx
// ended, the policy's answer if the server is unavailable, and the error
// itself, naming the key, otherwise.
func (g *Guard) ErrAnswer(ctx context.Context, req driver.Request, err error) (driver.Decision, error) {
	switch {
	case ctx.Err() != nil:
		return driver.Decision{}, ctx.Err()
	case errors.Is(err, driver.ErrClosed):
		return driver.Decision{}, err
	case !g.cfg.IsUnavailable(err):
		return driver.Decision{}, fmt.Errorf("%s: key %q: %w", g.cfg.Name, req.Key, err)
	}
	return g.Fallback(ctx, req, err)
}

// Fallback answers req by the policy; cause is the failure, or nil if
// the server was not asked.
func (g *Guard) Fallback(ctx context.Context, req driver.Request, cause error) (driver.Decision, error) {
	switch g.cfg.Policy {
	case FailOpen:
		return unlimited(), nil
	case FailLocal:
		d, err := g.local.Admit(ctx, req)
		return g.toLocal(d), err
	}
	return driver.Decision{}, g.Unavailable(cause)
}

// WriteAnswer answers a refund or pause the server could not take
// because it is unavailable (cause, nil if it was not asked): an error
// under FailClosed; under the other policies there is no one to tell.
func (g *Guard) WriteAnswer(cause error) error {
	if g.cfg.Policy != FailClosed {
		return nil
	}
	return g.Unavailable(cause)
}

// unlimited is the decision for a request the server is not asked about,
// which admits it at once: on the host's clock, the server's nearest.
func unlimited() driver.Decision {
	return driver.Decision{Allowed: true, Now: time.Now().UnixNano()}
}

// Unavailable returns the sentinel wrapping cause, or the last failure
// if cause is nil.
func (g *Guard) Unavailable(cause error) error {
	if cause == nil {
		if cause = g.node.Err(); cause == nil {
			return g.cfg.Unavailable
		}
	}
	return fmt.Errorf("%w: %w", g.cfg.Unavailable, cause)
}

// IsLocal reports whether d was decided by the local buckets.
func IsLocal(d driver.Decision) bool { return d.Allowed && d.Booking.TAT < 0 }

// Refund gives back an admission of the local buckets (IsLocal).
func (g *Guard) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	if g.local == nil {
		return nil
	}
	return g.local.Refund(ctx, req, g.fromLocal(d))
}

// Pause pauses key's local bucket too, under FailLocal, so that the pause
// outlives a failure of the server.
func (g *Guard) Pause(ctx context.Context, key string, d time.Duration) {
	if g.local != nil {
		g.local.Pause(ctx, key, d)
	}
}

// toLocal turns a decision of the local buckets into one of the store:
// its clock is moved to Unix time, like the server's, and its booking
// negated so that Refund knows where it belongs.
func (g *Guard) toLocal(d driver.Decision) driver.Decision {
	d.Now += g.localBase
	d.Booking.TAT, d.Booking.Prev = -d.Booking.TAT, -d.Booking.Prev
	return d
}

func (g *Guard) fromLocal(d driver.Decision) driver.Decision {
	d.Now -= g.localBase
	d.Booking.TAT, d.Booking.Prev = -d.Booking.TAT, -d.Booking.Prev
	return d
}
