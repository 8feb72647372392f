// Package redisstore keeps bucket state in Redis, so that processes on many
// hosts share their buckets: the backend for users who outgrow one host.
// It works with a single Redis, Sentinel and Redis Cluster; see
// docs/redis.md for deploying it.
//
// An admission is decided by a Lua script that runs driver.Decide
// atomically on the bucket's one key, on the Redis server's clock (TIME,
// integer microseconds): a GET and a SET of the key, and one round trip.
// Admit calls that arrive while round trips are in flight go out together
// as one pipeline, and AdmitBatch sends one pipeline; on a single server
// one script call decides up to 64 requests, in a Cluster each request is
// a call of its own. A call blocks for its round trip, which no caller's
// context cancels: a caller whose context ends returns at once, and what
// Redis admitted for it is given back. A key's state is 34 bytes plus 2 to
// 3 bytes per quota slot in use, and the key expires in the second after
// the bucket becomes fresh (Redis 6.2 or later). docs/benchmarks.md has
// the figures.
//
// A Store is a driver.LeaseBackend: a limit's inflight cap is decided in
// the same script call as its rate, against the bucket's lease set, a
// sorted set in the bucket key's Cluster slot (Store.LeaseKey) whose
// members are the held leases, scored with their expiry on the server's
// clock. Expired leases are removed before the set is counted, and the
// set expires with its latest lease. Renew and Release take one round
// trip for any number of leases. A lease costs its set about 40 bytes
// (the set itself about 100); docs/redis.md says what each failure
// policy does with a capped request.
//
// A Store is a driver.LearnBackend: what a learned limit's key learned
// (driver.Learned) is kept in the bucket's own key, 57 bytes more while it
// lasts, and Learn and the admissions that apply it are requests of the
// same script, atomic with each other.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/redis/go-redis/v9"
)

// Options configures a Store. The zero Options is ready to use.
type Options struct {
	// Prefix starts the Redis key of every bucket; the bucket's key, any
	// bytes, follows it unchanged. Default "leakybucket:". Stores that
	// share a Redis but not their buckets need prefixes neither of which
	// begins the other. A prefix with a hash tag ("{lb}:") puts every
	// bucket in one Cluster slot.
	Prefix string
	// LeasePrefix starts the Redis key of every bucket's lease set, which
	// holds the leases of limits with an inflight cap: it, a hash tag
	// that puts the set in its bucket's Cluster slot, and the bucket's
	// Redis key. Default "leakybucket-leases:". It may not hold '{', and
	// neither it nor Prefix may begin the other. Stores that share
	// buckets share it too.
	LeasePrefix string
	// FailurePolicy says what to answer while Redis is unavailable: in
	// a Cluster, for the keys of the masters that are. Default
	// FailClosed.
	FailurePolicy FailurePolicy
	// RetryInterval is how long after a failure the Store answers by its
	// FailurePolicy without asking Redis; then one call at a time asks
	// again until one succeeds. In a Cluster it is per master, and the
	// Store probes a master by itself, so that no call waits for one
	// known down (docs/redis.md). Default 500ms; a negative value asks
	// Redis on every call.
	RetryInterval time.Duration
	// Pipelines is how many round trips concurrent Admit calls may have
	// in flight at once. A caller that finds one free sends the
	// admissions waiting, its own with them, as one pipeline; otherwise
	// its admission waits, and the next round trip to end sends what
	// waits, so that callers share round trips. Default 2; -1 sends each
	// Admit in a round trip of its own at once, unbounded.
	Pipelines int
	// MaxBatch is the most admissions one coalesced pipeline carries.
	// Default 128. With Pipelines -1 nothing is coalesced, and setting it
	// is an error.
	MaxBatch int
}

// A Store is a driver.Backend on Redis. It is safe for concurrent use and
// owns goroutines (the pipelines, a local fallback's sweeper) until Close.
// It does not own the client: close it after the Store.
type Store struct {
	client      redis.UniversalClient
	prefix      string
	leasePrefix string
	guard       *failover.Guard

	admits  *coalesce.Batcher[admission, reply]
	calls   sync.RWMutex // held for reading by the calls begin starts
	closed  atomic.Bool
	group   int      // most requests per script call: 1 unless one server holds every key
	masters *masters // a Cluster's masters known down; nil for other clients
}

// New returns a Store keeping its buckets in client's Redis. It does not
// contact Redis: the script is loaded by the first admission.
func New(client redis.UniversalClient, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstore: nil client")
	}
	switch {
	case opts.Pipelines < -1:
		return nil, fmt.Errorf("redisstore: Pipelines must be -1 or more, got %d", opts.Pipelines)
	case opts.MaxBatch < 0:
		return nil, fmt.Errorf("redisstore: MaxBatch must not be negative, got %d", opts.MaxBatch)
	case opts.MaxBatch != 0 && opts.Pipelines == -1:
		return nil, errors.New("redisstore: MaxBatch has no effect with Pipelines -1 (nothing is coalesced)")
	}
	if opts.Prefix == "" {
		opts.Prefix = "leakybucket:"
	}
	if opts.LeasePrefix == "" {
		opts.LeasePrefix = "leakybucket-leases:"
	}
	switch {
	case strings.Contains(opts.LeasePrefix, "{"):
		return nil, fmt.Errorf("redisstore: LeasePrefix %q holds a '{': it would replace the hash tag that keeps a lease set in its bucket's slot", opts.LeasePrefix)
	case strings.HasPrefix(opts.LeasePrefix, opts.Prefix) || strings.HasPrefix(opts.Prefix, opts.LeasePrefix):
		return nil, fmt.Errorf("redisstore: Prefix %q and LeasePrefix %q: one begins the other, so that a lease set could take a bucket's name", opts.Prefix, opts.LeasePrefix)
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 500 * time.Millisecond
	}
	guard, err := failover.New(failover.Config{
		Policy:        failover.Policy(opts.FailurePolicy),
		Retry:         opts.RetryInterval,
		Unavailable:   ErrUnavailable,
		IsUnavailable: isUnavailable,
		Name:          "redisstore",
	})
	if err != nil {
		return nil, err
	}
	s := &Store{
		client:      client,
		prefix:      opts.Prefix,
		leasePrefix: opts.LeasePrefix,
		guard:       guard,
		group:       1,
	}
	switch c := client.(type) {
	case *redis.Client:
		// One server (a failover client too): a script call may take
		// keys of any slot. A Cluster or a Ring may not.
		s.group = maxGroup
	case *redis.ClusterClient:
		// The probes release a lease no one holds: an ID of the Store's
		// own.
		id := driver.NewLeaseIDs().Next()
		s.masters = newMasters(c, guard, opts.Prefix, opts.RetryInterval, func(key string) error {
			return s.runOne(context.Background(), s.leaseOp(key, appendLeaseOp(nil, opRelease, 0, id))).err
		})
	}
	pipelines, maxBatch := opts.Pipelines, opts.MaxBatch
	if pipelines == 0 {
		pipelines = 2
	}
	if maxBatch == 0 {
		maxBatch = 128
	}
	s.admits = coalesce.New(coalesce.Config[admission, reply]{
		Trips:    pipelines,
		MaxBatch: maxBatch,
		Run:      s.sendAdmits,
		GiveBack: s.giveBackAdmits,
	})
	return s, nil
}

// RedisKey returns the Redis key that holds the state of key's bucket:
// the prefix followed by key's bytes.
func (s *Store) RedisKey(key string) string { return s.prefix + key }

// LeaseKey returns the Redis key of the sorted set that holds the leases
// of key's bucket (Options.LeasePrefix): it lies in the slot of RedisKey.
func (s *Store) LeaseKey(key string) string { return leaseKey(s.leasePrefix, s.prefix+key) }

// Admit implements driver.Backend. It blocks for a round trip to Redis,
// shared with concurrent calls. The round trip does not depend on ctx: if
// ctx ends while the admission waits to be sent or for its answer, Admit
// returns ctx's error at once, and what Redis admitted for it is given
// back when the answer comes, in one round trip after the other callers'
// answers.
func (s *Store) Admit(ctx context.Context, req driver.Request) (driver.Decision, error) {
	if err := req.Validate(); err != nil {
		return driver.Decision{}, err
	}
	if s.closed.Load() {
		return driver.Decision{}, driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return driver.Decision{}, err
	}
	args, err := appendAdmit(make([]byte, 0, 7*8+16*len(req.Limit.Quotas)), &req)
	if err != nil {
		return driver.Decision{}, err
	}
	m, ask, probe := s.ask(req.Key)
	if !ask {
		return s.guard.Fallback(ctx, req, m.cause())
	}
	var r reply
	r, err = s.admits.Do(ctx, admission{req, s.opOf(req.Key, args)})
	s.settle(req.Key, m, err, probe)
	if err != nil {
		return s.guard.ErrAnswer(ctx, req, err)
	}
	return r.decisionOf(&req), nil
}

// AdmitBatch implements driver.BatchBackend: it sends the batch as one
// pipeline (one per Cluster node), a single round trip. Admissions of one
// key are decided in batch order. The round trip does not depend on ctx
// (the client's timeouts bound it): if ctx ends before the answer, every
// admission gets ctx's error, and what Redis admitted is given back.
func (s *Store) AdmitBatch(ctx context.Context, batch []driver.Admission) {
	var (
		idx  = make([]int, 0, len(batch))
		ops  = make([]op, 0, len(batch))
		args []byte
	)
	for i := range batch {
		a := &batch[i]
		a.Decision, a.Err = driver.Decision{}, a.Request.Validate()
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
		start := len(args)
		if args, a.Err = appendAdmit(args, &a.Request); a.Err != nil {
			continue
		}
		idx = append(idx, i)
		ops = append(ops, s.opOf(a.Key, args[start:len(args):len(args)]))
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
	ask, probe := s.guard.Ask() // in a Cluster, always: its masters are asked below
	if !ask {
		for _, i := range idx {
			batch[i].Decision, batch[i].Err = s.guard.Fallback(ctx, batch[i].Request, nil)
		}
		return
	}
	var via []*master // in a Cluster while a master is known down: each op's, if down
	if s.masters != nil && s.masters.anyDown() {
		sent := 0
		for k, i := range idx {
			m, ask := s.masters.ask(batch[i].Key)
			if !ask {
				batch[i].Decision, batch[i].Err = s.guard.Fallback(ctx, batch[i].Request, m.cause())
				continue
			}
			idx[sent], ops[sent] = i, ops[k]
			via = append(via, m)
			sent++
		}
		if idx, ops = idx[:sent], ops[:sent]; sent == 0 {
			return
		}
	}
	res := make([]result, len(ops))
	s.run(context.WithoutCancel(ctx), ops, res)
	var (
		failure error // the first error, if Redis answered none
		ended   = ctx.Err()
		refunds []driver.Admission
	)
	for k, i := range idx {
		a := &batch[i]
		r, err := res[k].r, res[k].err
		if err != nil {
			if k == 0 {
				failure = err
			}
			a.Decision, a.Err = s.guard.ErrAnswer(ctx, a.Request, err)
			continue
		}
		failure = nil
		if ended != nil {
			if r.allowed {
				refunds = append(refunds, driver.Admission{Request: a.Request, Decision: r.decision()})
			}
			a.Err = ended
			continue
		}
		a.Decision = r.decisionOf(&a.Request)
	}
	if s.masters == nil {
		s.guard.Settle(failure, probe)
	} else {
		for k, i := range idx {
			var m *master
			if via != nil {
				m = via[k]
			}
			s.masters.settle(batch[i].Key, m, res[k].err, false)
		}
	}
	if len(refunds) > 0 {
		s.giveBack(context.WithoutCancel(ctx), refunds)
	}
}

// Refund implements driver.Backend. Refunding an admission Redis has
// forgotten (it expired, or Redis restarted) does nothing. The refund of
// a capped admission releases its lease in the same call.
func (s *Store) Refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	if !d.Allowed || d.Booking.TAT == 0 {
		return nil // refused, or admitted by FailOpen: nothing was charged, no lease taken
	}
	if err := req.Validate(); err != nil {
		return err
	}
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.refund(ctx, req, d)
}

func (s *Store) refund(ctx context.Context, req driver.Request, d driver.Decision) error {
	if failover.IsLocal(d) {
		return s.guard.Refund(ctx, req, d)
	}
	return s.write(ctx, s.opOf(req.Key, appendRefund(nil, &req, d, true)))
}

// Pause implements driver.Backend. With FailLocal the pause also holds
// the local bucket, so that it outlives a failure of Redis.
func (s *Store) Pause(ctx context.Context, key string, d time.Duration) error {
	if key == "" {
		return driver.ErrEmptyKey
	}
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.guard.Pause(ctx, key, d)
	return s.write(ctx, s.opOf(key, appendPause(nil, d)))
}

// write runs a refund or pause, o. While Redis is unavailable it fails
// with ErrUnavailable under FailClosed; under the other policies there is
// no one to tell, and it returns nil.
func (s *Store) write(ctx context.Context, o op) error {
	if !s.begin() {
		return driver.ErrClosed
	}
	defer s.end()
	key := o.key[len(s.prefix):]
	m, ask, probe := s.ask(key)
	if !ask {
		return s.guard.WriteAnswer(m.cause())
	}
	// The reply, not only the command's error: a request that fails in
	// the script fails alone, in its reply. The round trip does not
	// depend on ctx, as in AdmitBatch.
	err := s.runOne(context.WithoutCancel(ctx), o).err
	s.settle(key, m, err, probe)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case !isUnavailable(err):
		return fmt.Errorf("redisstore: key %q: %w", key, err)
	}
	return s.guard.WriteAnswer(err)
}

// Close stops the Store's goroutines and makes later calls return
// driver.ErrClosed; calls waiting for Redis get their answers first (the
// client's timeouts bound the wait). It does not close the client. It is
// idempotent.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.calls.Lock() // the calls in flight outside the batcher have ended
	s.calls.Unlock()
	s.admits.Close()
	if s.masters != nil {
		s.masters.close()
	}
	s.guard.Close()
	return nil
}

// begin starts a call that sends to Redis outside the batcher (AdmitBatch,
// Refund, Pause), so that Close waits for it; it reports false once the
// Store is closed. end ends it.
func (s *Store) begin() bool {
	s.calls.RLock()
	if s.closed.Load() {
		s.calls.RUnlock()
		return false
	}
	return true
}

func (s *Store) end() { s.calls.RUnlock() }

var (
	_ driver.BatchBackend = (*Store)(nil)
	_ driver.LeaseBackend = (*Store)(nil)
	_ driver.LearnBackend = (*Store)(nil)
)
