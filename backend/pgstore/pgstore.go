// Package pgstore keeps bucket state in PostgreSQL, so that processes on
// many hosts share their buckets through the database they already run.
// See docs/postgres.md for deploying it.
//
// Admissions are decided by a PL/pgSQL function, a port of
// driver.Decide, on the database's clock (clock_timestamp(), integer
// microseconds): one statement per batch, which decides every request
// and writes each row once. A schema's batches of more than 8 keys are
// decided one at a time (an advisory lock), smaller ones beside each
// other under advisory locks of their keys. Admit, Refund and Pause calls
// that arrive while round trips are in flight go out together as one
// batch, and AdmitBatch sends one. A call blocks for its round trip, which
// no caller's context cancels (Options.Timeout bounds it): a caller whose
// context ends returns at once, and what the database admitted for it is
// given back. A key is one row of about 100 bytes plus the key and 16
// bytes per quota slot in use; rows of idle keys are deleted by a periodic sweep. Every
// statement runs without a prepared statement or session state, so the
// Store works through PgBouncer in transaction mode.
//
// The Store is a driver.LeaseBackend: a limit's inflight cap is decided
// by the same function call as its rate, under the same locks, with the
// key's leases in a table of their own (a row of about 160 bytes with
// its index entry, per lease held), expiring by the database's clock;
// Renew and Release are one statement for a whole slice, and a key is
// kept while one of its leases is held.
//
// The Store is a driver.LearnBackend too: what a learned limit's key
// learns is kept in its row, learned by the same function under the
// same locks, and applied by every decision of the key's admissions; a
// key is kept while it holds.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
	"github.com/leakybucket/leakybucket/internal/failover"
)

// Options configures a Store. The zero Options is ready to use.
type Options struct {
	// Schema is the PostgreSQL schema that holds the Store's table and
	// functions, created by the first call if it does not exist. Default
	// "leakybucket". Stores that share a database but not their buckets
	// use schemas of their own.
	Schema string
	// FailurePolicy says what to answer while PostgreSQL is unavailable.
	// Default FailClosed.
	FailurePolicy FailurePolicy
	// RetryInterval is how long after a failure the Store answers by its
	// FailurePolicy without asking PostgreSQL; then one call at a time
	// asks again until one succeeds. Default 500ms; a negative value asks
	// on every call.
	RetryInterval time.Duration
	// Conns is how many round trips concurrent Admit calls may have in
	// flight at once, each on a connection of the pool. A caller that
	// finds one free sends the admissions waiting, its own with them, as
	// one batch; otherwise its admission waits, and the next round trip
	// to end sends what waits, so that callers share round trips. Default
	// 2; -1 sends each Admit in a round trip of its own at once,
	// unbounded.
	Conns int
	// MaxBatch is the most admissions one coalesced round trip carries.
	// Default 128. With Conns -1 nothing is coalesced, and setting it is
	// an error.
	MaxBatch int
	// Timeout bounds every round trip, which no caller's context does.
	// Default 5s.
	Timeout time.Duration
	// Durable makes every admission wait until the database has flushed
	// it to disk (synchronous_commit on). By default a transaction of the
	// Store commits without waiting (synchronous_commit off for it alone,
	// whatever the server's setting): a crash of the server may then lose
	// the admissions of its last moments (up to three times
	// wal_writer_delay, 600ms by default), which afterwards only lets
	// those keys admit again what they admitted then; a restart loses
	// nothing. Waiting for the flush costs a disk sync per round trip.
	Durable bool
	// SweepInterval is how often the Store deletes the rows of keys whose
	// buckets have become fresh. Default 1 minute; a negative value never
	// sweeps (another Store on the same schema does).
	SweepInterval time.Duration
}

// A Store is a driver.LeaseBackend and driver.LearnBackend on
// PostgreSQL. It is safe for concurrent use and owns goroutines (the
// round trips, the sweeper, a local fallback's sweeper) until Close. It
// does not own the pool: close it after the Store.
type Store struct {
	pool    *pgxpool.Pool
	schema  string // quoted
	sql     statements
	mode    pgx.QueryExecMode // of the decide statement
	timeout time.Duration
	durable bool
	guard   *failover.Guard

	ready   atomic.Bool // the schema is installed
	install sync.Mutex

	admits *coalesce.Batcher[admission, answer]
	calls  sync.RWMutex // held for reading by the calls begin starts
	closed atomic.Bool

	stopSweep context.CancelFunc
	sweeper   sync.WaitGroup
}

// New returns a Store keeping its buckets in pool's database. It does not
// contact the database: the first call creates or upgrades the schema.
func New(pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, errors.New("pgstore: nil pool")
	}
	switch {
	case opts.Conns < -1:
		return nil, fmt.Errorf("pgstore: Conns must be -1 or more, got %d", opts.Conns)
	case opts.MaxBatch < 0:
		return nil, fmt.Errorf("pgstore: MaxBatch must not be negative, got %d", opts.MaxBatch)
	case opts.MaxBatch != 0 && opts.Conns == -1:
		return nil, errors.New("pgstore: MaxBatch has no effect with Conns -1 (nothing is coalesced)")
	case opts.Timeout < 0:
		return nil, fmt.Errorf("pgstore: Timeout must not be negative, got %v", opts.Timeout)
	}
	if opts.Schema == "" {
		opts.Schema = "leakybucket"
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 500 * time.Millisecond
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = time.Minute
	}
	guard, err := failover.New(failover.Config{
		Policy:        failover.Policy(opts.FailurePolicy),
		Retry:         opts.RetryInterval,
		Unavailable:   ErrUnavailable,
		IsUnavailable: isUnavailable,
		Name:          "pgstore",
	})
	if err != nil {
		return nil, err
	}
	s := &Store{
		pool:    pool,
		schema:  pgx.Identifier{opts.Schema}.Sanitize(),
		timeout: opts.Timeout,
		durable: opts.Durable,
		guard:   guard,
	}
	s.sql = newStatements(s.schema)
	// The decide statement is parsed anew each time, unnamed, as PgBouncer
	// in transaction mode needs; its description (argument and result
	// types, which a version of the function never changes) is cached by
	// the connection, so that arguments and results travel in binary: a
	// batch of 64 took 437 allocations instead of 1,938 in text, and 1.5
	// ms instead of 2.0. A pool without a description cache gets text.
	s.mode = pgx.QueryExecModeCacheDescribe
	if pool.Config().ConnConfig.DescriptionCacheCapacity == 0 {
		s.mode = pgx.QueryExecModeExec
	}
	conns, maxBatch := opts.Conns, opts.MaxBatch
	if conns == 0 {
		conns = 2
	}
	if maxBatch == 0 {
		maxBatch = 128
	}
	s.admits = coalesce.New(coalesce.Config[admission, answer]{
		Trips:    conns,
		MaxBatch: maxBatch,
		Run:      s.sendAdmits,
		GiveBack: s.giveBackAdmits,
	})
	ctx, stop := context.WithCancel(context.Background())
	s.stopSweep = stop
	if opts.SweepInterval > 0 {
		s.sweeper.Add(1)
		go s.sweepEvery(ctx, opts.SweepInterval)
	}
	return s, nil
}

// Table returns the quoted, schema-qualified name of the table that holds
// the buckets, one row per key whose bucket is not fresh or that holds leases.
func (s *Store) Table() string { return s.schema + ".buckets" }

// Admit implements driver.Backend. It blocks for a round trip to
// PostgreSQL, shared with concurrent calls. The round trip does not depend
// on ctx: if ctx ends while the admission waits to be sent or for its
// answer, Admit returns ctx's error at once, and what the database
// admitted for it is given back when the answer comes.
func (s *Store) Admit(ctx context.Context, req driver.Request) (driver.Decision, error) {
	if err := validate(&req); err != nil {
		return driver.Decision{}, err
	}
	if s.closed.Load() {
		return driver.Decision{}, driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return driver.Decision{}, err
	}
	ask, probe := s.guard.Ask()
	if !ask {
		return s.guard.Fallback(ctx, req, nil)
	}
	r, err := s.admits.Do(ctx, admission{op: admitOp(&req), req: req})
	s.guard.Settle(err, probe)
	if err != nil {
		return s.guard.ErrAnswer(ctx, req, err)
	}
	return r.decision(), nil
}

// AdmitBatch implements driver.BatchBackend: one statement decides the
// batch, a single round trip. Admissions of one key are decided in batch
// order. The round trip does not depend on ctx (Options.Timeout bounds
// it): if ctx ends before the answer, every admission gets ctx's error,
// and what the database admitted is given back.
func (s *Store) AdmitBatch(ctx context.Context, batch []driver.Admission) {
	var (
		idx = make([]int, 0, len(batch))
		ops = make([]op, 0, len(batch))
	)
	for i := range batch {
		a := &batch[i]
		a.Decision, a.Err = driver.Decision{}, validate(&a.Request)
		switch {
		case a.Err != nil:
			continue
		case s.closed.Load():
			a.Err = driver.ErrClosed
			continue
		case ctx.Err() != nil:
			a.Err = ctx.Err()
			continue
		}
		idx = append(idx, i)
		ops = append(ops, admitOp(&a.Request))
	}
	if len(ops) == 0 {
		return
	}
	if !s.begin() {
		for _, i := range idx {
			batch[i].Err = driver.ErrClosed
		}
		return
	}
	defer s.end()
	ask, probe := s.guard.Ask()
	if !ask {
		for _, i := range idx {
			batch[i].Decision, batch[i].Err = s.guard.Fallback(ctx, batch[i].Request, nil)
		}
		return
	}
	replies, err := s.run(context.WithoutCancel(ctx), ops)
	s.guard.Settle(err, probe)
	ended := ctx.Err()
	var refunds []driver.Admission
	for k, i := range idx {
		a := &batch[i]
		switch {
		case err != nil:
			a.Decision, a.Err = s.guard.ErrAnswer(ctx, a.Request, err)
		case ended != nil:
			if replies[k].code == codeAllowed {
				refunds = append(refunds, driver.Admission{Request: a.Request, Decision: replies[k].decision()})
			}
			a.Err = ended
		default:
			a.Decision = replies[k].decision()
		}
	}
	if len(refunds) > 0 {
		s.giveBack(context.WithoutCancel(ctx), refunds)
	}
}

// Refund implements driver.Backend. Concurrent refunds, pauses and
// admissions share round trips. Refunding an admission the database has
// forgotten (its row was swept) does nothing.
func (s *Store) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	if !d.Allowed || d.Booking.TAT == 0 {
		return nil // refused, or admitted by FailOpen: nothing was charged
	}
	if err := validate(&req); err != nil {
		return err
	}
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if failover.IsLocal(d) {
		return s.guard.Refund(ctx, req, d)
	}
	return s.write(ctx, req.Key, admission{op: refundOp(&req, d, true)})
}

// Pause implements driver.Backend. With FailLocal the pause also holds
// the local bucket, so that it outlives a failure of PostgreSQL.
func (s *Store) Pause(ctx context.Context, key string, d time.Duration) error {
	if key == "" {
		return driver.ErrEmptyKey
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.guard.Pause(ctx, key, d)
	return s.write(ctx, key, admission{op: pauseOp(key, d)})
}

// write runs a refund or pause of key, coalesced with concurrent calls as
// admissions are. While PostgreSQL is unavailable it fails with
// ErrUnavailable under FailClosed; under the other policies there is no
// one to tell, and it returns nil.
func (s *Store) write(ctx context.Context, key string, a admission) error {
	ask, probe := s.guard.Ask()
	var err error
	if ask {
		_, err = s.admits.Do(ctx, a)
		s.guard.Settle(err, probe)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, driver.ErrClosed):
			return err
		case !isUnavailable(err):
			return fmt.Errorf("pgstore: key %q: %w", key, err)
		}
	}
	return s.guard.WriteAnswer(err)
}

// Close stops the Store's goroutines and makes later calls return
// driver.ErrClosed; calls waiting for PostgreSQL get their answers first
// (Options.Timeout bounds the wait). It does not close the pool. It is
// idempotent.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.calls.Lock() // the calls in flight outside the batcher have ended
	s.calls.Unlock()
	s.admits.Close()
	s.stopSweep()
	s.sweeper.Wait()
	s.guard.Close()
	return nil
}

// begin starts a call that sends to PostgreSQL outside the batcher
// (AdmitBatch), so that Close waits for it; it reports
// false once the Store is closed. end ends it.
func (s *Store) begin() bool {
	s.calls.RLock()
	if s.closed.Load() {
		s.calls.RUnlock()
		return false
	}
	return true
}

func (s *Store) end() { s.calls.RUnlock() }

// MaxKeyLen is the longest key a Store takes, in bytes: the primary key's
// B-tree holds entries of at most 2,704 bytes, the key's with its row
// pointer.
const MaxKeyLen = 2048

// ErrKeyTooLong is the error of a call on a key longer than MaxKeyLen.
var ErrKeyTooLong = fmt.Errorf("pgstore: key longer than %d bytes", MaxKeyLen)

// validate is req.Validate, checkKey, and for a capped limit checkLease.
func validate(req *driver.Request) error {
	if err := req.Validate(); err != nil {
		return err
	}
	if err := checkKey(req.Key); err != nil {
		return err
	}
	if req.Limit.Inflight > 0 {
		return checkLease(req.Lease)
	}
	return nil
}

func checkKey(key string) error {
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d", ErrKeyTooLong, len(key))
	}
	return nil
}

var (
	_ driver.BatchBackend = (*Store)(nil)
	_ driver.LeaseBackend = (*Store)(nil)
	_ driver.LearnBackend = (*Store)(nil)
)
