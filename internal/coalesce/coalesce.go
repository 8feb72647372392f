// Package coalesce combines concurrent calls into shared round trips: the
// one mechanism behind sqlitestore's shared transactions and redisstore's
// pipelines.
//
// A caller that finds a round trip free runs one; callers that arrive
// while the round trips are all in use queue, and a round trip takes the
// calls queued, up to a bound, when it is ready for them. A caller whose
// context ends while its call is queued leaves at once, and no round trip
// carries its call. The more callers, the more calls each round trip
// carries.
package coalesce

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Config configures a Batcher.
type Config[Q, A any] struct {
	// Trips is how many round trips may run at once; -1 runs every call
	// at once in a round trip of its own, unbounded.
	Trips int
	// MaxBatch is the most calls one round trip carries.
	MaxBatch int
	// Run runs a round trip: it calls r.Take at most once, when it is
	// ready for the calls queued, and sets the answer of every call in
	// r.Calls.
	Run func(ctx context.Context, r *Round[Q, A])
	// GiveBack, if set, detaches round trips from their callers: a round
	// trip runs under no caller's context (on a goroutine of the Batcher,
	// or on the caller's own if its context cannot end), a caller whose
	// context ends leaves at once even once its call is taken, and
	// GiveBack receives, after the others have their answers, the calls
	// answered after their callers left, to undo what they did.
	//
	// If GiveBack is nil, a round trip runs on the goroutine and under the
	// context of the caller that starts it, a call taken into a round trip
	// waits for its answer, and the next round trip is run by the first
	// caller still queued.
	GiveBack func(calls []*Call[Q, A])
}

// A Batcher coalesces calls as its Config says. It is safe for concurrent
// use.
type Batcher[Q, A any] struct {
	cfg Config[Q, A]

	mu       sync.Mutex
	queue    []*Call[Q, A]
	inflight int // round trips running
	rejoin   int // callers recent round trips answered that have not come back since
	closed   bool

	trips  sync.WaitGroup // round trips running
	calls  sync.Pool      // *Call[Q, A]
	rounds sync.Pool      // *Round[Q, A]
}

// A Call is one caller's request and, once its round trip has run, its
// answer.
type Call[Q, A any] struct {
	Req Q
	Ans A
	Err error

	state atomic.Int32
	done  chan bool // true: answered; false: run the next round trip
}

// The states of a Call: queued, then taken into a round trip, then
// answered; its caller may leave it from queued (or from taken, if round
// trips are detached), and then whoever holds it drops it.
const (
	queued int32 = iota
	taken
	left
	answered
)

// A Round is the calls one round trip carries.
type Round[Q, A any] struct {
	Calls []*Call[Q, A]
	b     *Batcher[Q, A]
}

// New returns a Batcher. Trips must be -1 or more than 0, and MaxBatch
// more than 0.
func New[Q, A any](cfg Config[Q, A]) *Batcher[Q, A] {
	if cfg.Trips == 0 || cfg.Trips < -1 || cfg.MaxBatch <= 0 || cfg.Run == nil {
		panic("coalesce: invalid Config")
	}
	return &Batcher[Q, A]{cfg: cfg}
}

func (b *Batcher[Q, A]) detached() bool { return b.cfg.GiveBack != nil }

// Do runs req in a round trip and returns its answer, or ctx's error if
// ctx ends first (see Config.GiveBack for when it can), or
// driver.ErrClosed once the Batcher is closed.
func (b *Batcher[Q, A]) Do(ctx context.Context, req Q) (A, error) {
	c := b.newCall(req)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.release(c)
		var zero A
		return zero, driver.ErrClosed
	}
	if b.cfg.Trips > 0 {
		// Callers a round trip just answered tend to come straight back:
		// while another round trip runs, wait for them to queue too, so
		// that they share the next round trip rather than take one each.
		// The round trip running takes them when it ends in any case.
		if b.rejoin > 0 {
			b.rejoin--
		}
		if b.inflight >= b.cfg.Trips || b.inflight > 0 && b.rejoin > 0 {
			b.queue = append(b.queue, c)
			b.mu.Unlock()
			return b.wait(ctx, c)
		}
	}
	b.inflight++
	b.trips.Add(1)
	b.mu.Unlock()
	c.state.Store(taken)
	if b.detached() && ctx.Done() != nil {
		go b.loop(c)
		return b.wait(ctx, c)
	}
	// Nothing lets this caller return before its answer (or the round
	// trip depends on its context), so it runs the round trip itself,
	// sparing a goroutine's start and wake-up.
	return b.lead(ctx, c)
}

func (b *Batcher[Q, A]) newCall(req Q) *Call[Q, A] {
	c, _ := b.calls.Get().(*Call[Q, A])
	if c == nil {
		c = &Call[Q, A]{done: make(chan bool, 1)}
	}
	c.Req = req
	c.state.Store(queued)
	return c
}

func (b *Batcher[Q, A]) release(c *Call[Q, A]) {
	var zero Call[Q, A]
	c.Req, c.Ans, c.Err = zero.Req, zero.Ans, nil
	b.calls.Put(c)
}

// wait waits for c's answer, or for ctx to end.
func (b *Batcher[Q, A]) wait(ctx context.Context, c *Call[Q, A]) (A, error) {
	var ok bool
	select {
	case ok = <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(queued, left) || b.detached() && c.state.CompareAndSwap(taken, left) {
			var zero A
			return zero, ctx.Err() // whoever holds c drops it
		}
		ok = <-c.done // taken, or handed the next round trip: it is coming
	}
	if !ok {
		return b.lead(ctx, c)
	}
	ans, err := c.Ans, c.Err
	b.release(c)
	return ans, err
}

// lead runs a round trip on the caller's goroutine, c first in it, then
// passes on what is queued.
func (b *Batcher[Q, A]) lead(ctx context.Context, c *Call[Q, A]) (A, error) {
	if b.detached() {
		ctx = context.Background() // it cannot end anyway; nor can the others'
	}
	b.round(ctx, c, c)
	ans, err := c.Ans, c.Err
	b.release(c)
	if b.after() {
		go b.loop(nil)
	}
	return ans, err
}

// loop runs round trips on a goroutine of the Batcher, first in the first
// (if not nil), until none is due.
func (b *Batcher[Q, A]) loop(first *Call[Q, A]) {
	b.round(context.Background(), first, nil)
	for b.after() {
		b.round(context.Background(), nil, nil)
	}
}

// after is called when a round trip ends, and reports whether the caller
// is to run another: when calls are queued and round trips are detached.
// If they are not, the first caller still queued runs it.
func (b *Batcher[Q, A]) after() bool {
	b.mu.Lock()
	for len(b.queue) > 0 && !b.closed && b.cfg.Trips > 0 {
		if b.detached() {
			b.mu.Unlock()
			return true
		}
		c := b.queue[0]
		b.queue = b.queue[:copy(b.queue, b.queue[1:])]
		if c.state.CompareAndSwap(queued, taken) {
			b.mu.Unlock()
			c.done <- false
			return false
		}
		b.release(c) // its caller left
	}
	b.inflight--
	b.mu.Unlock()
	b.trips.Done()
	return false
}

// round runs one round trip, first in it (if not nil), and answers its
// calls but own, whose caller runs it.
func (b *Batcher[Q, A]) round(ctx context.Context, first, own *Call[Q, A]) {
	r, _ := b.rounds.Get().(*Round[Q, A])
	if r == nil {
		r = &Round[Q, A]{b: b}
	}
	if first != nil {
		r.Calls = append(r.Calls, first)
	}
	b.cfg.Run(ctx, r)
	if n := len(r.Calls); n > 0 && b.cfg.Trips > 1 {
		// The callers answered now are expected back (see Do): in
		// addition to those expected already if callers wait, else alone.
		b.mu.Lock()
		if len(b.queue) > 0 {
			b.rejoin += n
		} else {
			b.rejoin = n
		}
		b.mu.Unlock()
	}
	var gone []*Call[Q, A]
	for _, c := range r.Calls {
		switch {
		case c == own:
		case c.state.CompareAndSwap(taken, answered):
			c.done <- true
		default:
			gone = append(gone, c) // its caller left while it was taken
		}
	}
	if len(gone) > 0 {
		b.cfg.GiveBack(gone)
		for _, c := range gone {
			b.release(c)
		}
	}
	clear(r.Calls)
	r.Calls = r.Calls[:0]
	b.rounds.Put(r)
}

// Take adds the calls queued to r.Calls, oldest first, up to MaxBatch in
// all. If calls are still queued, a round trip is free and round trips
// are detached, another round trip starts for them.
func (r *Round[Q, A]) Take() {
	b := r.b
	if b.cfg.Trips < 0 {
		return
	}
	b.mu.Lock()
	n := 0
	for n < len(b.queue) && len(r.Calls) < b.cfg.MaxBatch {
		c := b.queue[n]
		n++
		if c.state.CompareAndSwap(queued, taken) {
			r.Calls = append(r.Calls, c)
		} else {
			b.release(c) // its caller left
		}
	}
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	if rest > 0 && b.detached() && !b.closed && b.inflight < b.cfg.Trips {
		b.inflight++
		b.trips.Add(1)
		go b.loop(nil)
	}
	b.mu.Unlock()
}

// Close waits for the round trips running, and answers the calls still
// queued with driver.ErrClosed; later calls get it too. A round trip that
// is not detached must be able to end: its caller's context, or whatever
// the round trip waits for, ends it.
func (b *Batcher[Q, A]) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.trips.Wait()
	b.mu.Lock()
	queue := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, c := range queue {
		if c.state.CompareAndSwap(queued, answered) {
			c.Err = driver.ErrClosed
			c.done <- true
		}
	}
}

// Len returns how many calls are queued, including those whose callers
// left and that no round trip has dropped yet.
func (b *Batcher[Q, A]) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// Running returns how many round trips are running.
func (b *Batcher[Q, A]) Running() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inflight
}
