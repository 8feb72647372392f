// Package memstore keeps bucket state in process memory: the
// driver.Backend for one process. Its calls never block on anything but a
// shard's lock, held for one decision; they are safe for concurrent use,
// take constant time, and allocate nothing once a key exists (a key costs
// one 128-byte entry, plus its quota slots and leases). A background sweeper forgets
// keys whose buckets have become fresh, one shard at a time.
package memstore

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Options configures a Store. The zero Options is ready to use.
type Options struct {
	// Shards is the number of independently locked shards, a power of two.
	// Default 256.
	Shards int
	// SweepInterval is how often a background sweep forgets keys whose
	// buckets have become fresh (guarantee 8). Default one minute; a
	// negative value disables the sweep, and keys are then kept until
	// the Store is dropped.
	SweepInterval time.Duration
	// Now returns the current time. Default: the monotonic clock. Set it
	// to drive the store from a fake clock in tests; it must never go
	// backwards.
	Now func() time.Time
}

// A Store is an in-process driver.Backend. Its clock is monotonic
// nanoseconds since New. It is safe for concurrent use; Close stops its
// sweeper. An admission costs one clock reading, one hash and one shard
// lock; AdmitBatch reads the clock once for the whole batch
// (docs/benchmarks.md has the figures).
type Store struct {
	shards []shard
	mask   uint64
	seed   maphash.Seed
	start  time.Time
	now    func() time.Time
	closed atomic.Bool
	stop   chan struct{}
	done   chan struct{}
}

// A shard maps the keys whose hashes fall in it by their hash, so that a
// key is hashed once per call: keys that share a hash chain through next.
type shard struct {
	mu    sync.Mutex
	m     map[uint64]*entry
	swept int64    // the clock of the latest sweep: a key it forgot starts there
	_     [40]byte // keep shards on separate cache lines
}

// An entry is one key's state, padded to cache lines of its own so that
// cores updating neighbouring keys do not contend.
type entry struct {
	key    string
	next   *entry
	seen   int64         // the clock of the key's latest decision
	leases driver.Leases // of a capped limit (Limit.Inflight)
	driver.State
	_ [128 - unsafe.Sizeof(driver.State{}) - unsafe.Sizeof(driver.Leases{}) - 32]byte
}

// freshAt returns when the key may be forgotten: its bucket fresh and no
// lease held.
func (e *entry) freshAt() int64 { return max(driver.FreshAt(&e.State), e.leases.FreshAt()) }

// get returns key's entry, or nil.
func (sh *shard) get(h uint64, key string) *entry {
	e := sh.m[h]
	for e != nil && e.key != key {
		e = e.next
	}
	return e
}

// put adds e, whose key the shard does not hold.
func (sh *shard) put(h uint64, e *entry) {
	e.next = sh.m[h]
	sh.m[h] = e
}

// drop removes key's entry, e, from the chain that starts at first.
func (sh *shard) drop(h uint64, first, e *entry) {
	if first == e {
		if e.next == nil {
			delete(sh.m, h)
		} else {
			sh.m[h] = e.next
		}
		return
	}
	for p := first; p != nil; p = p.next {
		if p.next == e {
			p.next = e.next
			return
		}
	}
}

// New returns a Store.
func New(opts Options) (*Store, error) {
	n := opts.Shards
	if n == 0 {
		n = 256
	}
	if n < 1 || n&(n-1) != 0 {
		return nil, fmt.Errorf("memstore: Shards must be a power of two, got %d", opts.Shards)
	}
	every := opts.SweepInterval
	if every == 0 {
		every = time.Minute
	}
	s := &Store{
		shards: make([]shard, n),
		mask:   uint64(n - 1),
		seed:   maphash.MakeSeed(),
		now:    opts.Now,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[uint64]*entry)
	}
	if s.now != nil {
		s.start = s.now()
	} else {
		s.start = time.Now()
	}
	if every > 0 {
		go s.sweepEvery(every)
	} else {
		close(s.done)
	}
	return s, nil
}

// ticks returns the store's clock in nanoseconds since New.
func (s *Store) ticks() int64 {
	if s.now != nil {
		return int64(s.now().Sub(s.start))
	}
	return int64(time.Since(s.start))
}

// shard returns key's shard and hash.
func (s *Store) shard(key string) (*shard, uint64) {
	h := maphash.String(s.seed, key)
	return &s.shards[h&s.mask], h
}

// Admit implements driver.Backend.
func (s *Store) Admit(_ context.Context, req driver.Request) (driver.Decision, error) {
	if s.closed.Load() {
		return driver.Decision{}, driver.ErrClosed
	}
	var d driver.Decision
	err := s.admit(&req, s.ticks(), &d)
	return d, err
}

// AdmitBatch implements driver.BatchBackend. The whole batch is decided
// at the time it arrives: the clock is read once.
func (s *Store) AdmitBatch(_ context.Context, batch []driver.Admission) {
	closed := s.closed.Load()
	now := s.ticks()
	for i := range batch {
		a := &batch[i]
		if closed {
			a.Decision, a.Err = driver.Decision{}, driver.ErrClosed
			continue
		}
		a.Err = s.admit(&a.Request, now, &a.Decision)
	}
}

// admit decides req at now, or at the latest time a decision for its key
// was made if that is later: a batch's clock, read once, can fall behind
// another caller's, and Decide needs its clock never to go backwards (it
// forgets quota slots by it). It writes the decision to *d rather than
// return it: each copy of a returned Decision, too large for registers,
// stalls the CPU (its stores cannot be forwarded to the copy's loads),
// which cost Admit 8 of its 94 ns.
func (s *Store) admit(req *driver.Request, now int64, d *driver.Decision) (err error) {
	sh, h := s.shard(req.Key)
	sh.mu.Lock()
	e := sh.get(h, req.Key)
	fresh := e == nil
	if fresh {
		// A sweep may have forgotten the key after deciding it at a
		// later time than now: its clock must not go back before that.
		e = &entry{key: req.Key, seen: sh.swept}
	}
	e.seen = max(e.seen, now)
	if req.Limit.Inflight > 0 {
		*d, err = driver.DecideLeased(&e.State, &e.leases, req, time.Nanosecond, e.seen)
	} else {
		*d, err = driver.Decide(&e.State, req, time.Nanosecond, e.seen)
	}
	if d.Allowed && fresh {
		sh.put(h, e)
	}
	sh.mu.Unlock()
	return err
}

// Refund implements driver.Backend.
func (s *Store) Refund(_ context.Context, req driver.Request, d driver.Decision) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	sh, h := s.shard(req.Key)
	sh.mu.Lock()
	if e := sh.get(h, req.Key); e != nil {
		driver.Refund(&e.State, &req, d, time.Nanosecond)
		driver.ReleaseLeased(&e.leases, &req)
	}
	sh.mu.Unlock()
	return nil
}

// Renew implements driver.LeaseBackend.
func (s *Store) Renew(_ context.Context, leases []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if s.closed.Load() {
		return nil, driver.ErrClosed
	}
	if err := driver.CheckRenew(ttl); err != nil {
		return nil, err
	}
	var lost []driver.LeaseRef
	for _, l := range leases {
		sh, h := s.shard(l.Key)
		sh.mu.Lock()
		now := s.ticks()
		e := sh.get(h, l.Key)
		if e == nil || !e.leases.Renew(l.ID, now, now+int64(ttl)) {
			lost = append(lost, l)
		}
		sh.mu.Unlock()
	}
	return lost, nil
}

// Release implements driver.LeaseBackend.
func (s *Store) Release(_ context.Context, leases []driver.LeaseRef) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	for _, l := range leases {
		sh, h := s.shard(l.Key)
		sh.mu.Lock()
		if e := sh.get(h, l.Key); e != nil {
			e.leases.Release(l.ID)
		}
		sh.mu.Unlock()
	}
	return nil
}

// Pause implements driver.Backend.
func (s *Store) Pause(_ context.Context, key string, d time.Duration) error {
	if s.closed.Load() {
		return driver.ErrClosed
	}
	if key == "" {
		return driver.ErrEmptyKey
	}
	sh, h := s.shard(key)
	sh.mu.Lock()
	e := sh.get(h, key)
	if e == nil {
		e = &entry{key: key, seen: sh.swept}
		sh.put(h, e)
	}
	driver.Pause(&e.State, s.ticks()+int64(min(max(d, 0), driver.MaxDuration)))
	sh.mu.Unlock()
	return nil
}

// Learn implements driver.LearnBackend.
func (s *Store) Learn(_ context.Context, key string, lim driver.Limit, fb driver.Feedback) (time.Duration, error) {
	if s.closed.Load() {
		return 0, driver.ErrClosed
	}
	if err := driver.CheckLearn(key, &lim, &fb); err != nil {
		return 0, err
	}
	sh, h := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.get(h, key)
	if e == nil {
		e = &entry{key: key, seen: sh.swept}
		sh.put(h, e)
	}
	e.seen = max(e.seen, s.ticks())
	return driver.Learn(&e.State, &lim, &fb, time.Nanosecond, e.seen), nil
}

// sweep forgets every key whose bucket is equivalent to a fresh one. It
// locks one shard at a time.
func (s *Store) sweep() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		now := s.ticks()
		sh.swept = max(sh.swept, now)
		for h, first := range sh.m {
			for e := first; e != nil; e = e.next {
				if e.freshAt() <= now {
					sh.drop(h, first, e)
					first = sh.m[h]
				}
			}
		}
		sh.mu.Unlock()
	}
}

func (s *Store) sweepEvery(d time.Duration) {
	defer close(s.done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.sweep()
		case <-s.stop:
			return
		}
	}
}

// Close stops the sweeper and makes later calls return driver.ErrClosed.
// It is idempotent.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	<-s.done
	return nil
}

var (
	_ driver.BatchBackend = (*Store)(nil)
	_ driver.LeaseBackend = (*Store)(nil)
	_ driver.LearnBackend = (*Store)(nil)
)
