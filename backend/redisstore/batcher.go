package redisstore

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A batcher coalesces concurrent Admit calls so that they share round
// trips. At most `pipelines` round trips are in flight at once. A caller
// that finds a round trip free sends what is queued, its own admission
// with it: on a new goroutine, so that it can return as soon as its
// context ends (see wait), or itself if its context cannot end. Otherwise
// its admission waits in the queue, and a round trip that ends sends
// whatever queued meanwhile (up to maxBatch) as its next pipeline, on a
// goroutine. So batches grow with the load: the more callers, the more
// admissions each round trip carries. With pipelines -1, every caller
// sends its own admission at once.
type batcher struct {
	s         *Store
	pipelines int
	maxBatch  int

	mu       sync.Mutex
	queue    []*call
	inflight int // round trips in flight
	rejoin   int // callers that recent round trips answered and that have not queued since
	closed   bool

	trips sync.WaitGroup // round trips in flight
}

// A call is one queued admission. Its state moves from queued to sent to
// done; the caller may abandon it (its ctx ended) from queued or sent, and
// then the round trip gives back whatever Redis admitted.
type call struct {
	state atomic.Int32
	req   driver.Request // for a refund if abandoned
	key   string
	args  []byte
	r     reply
	err   error
	done  chan struct{} // receives once when state becomes done
}

const (
	queued int32 = iota
	sent
	abandoned
	done
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func newBatcher(s *Store, pipelines, maxBatch int) *batcher {
	return &batcher{s: s, pipelines: pipelines, maxBatch: maxBatch}
}

// admit decides one admission and waits for its answer or for ctx to end.
// The round trip does not depend on ctx: if ctx ends first, admit returns
// at once, and what Redis admitted is given back when the answer comes.
func (b *batcher) admit(ctx context.Context, req driver.Request, key string, args []byte) (reply, error) {
	c := callPool.Get().(*call)
	c.state.Store(queued)
	c.req, c.key, c.args = req, key, args
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		c.release()
		return reply{}, bucket.ErrClosed
	}
	var batch []*call
	if b.pipelines < 0 {
		batch = []*call{c}
	} else {
		b.queue = append(b.queue, c)
		// Callers a round trip just answered tend to come straight back:
		// while another round trip is in flight, wait for them to queue
		// too, so that they share the next round trip rather than take one
		// each. The round trip in flight sends them when it ends in any
		// case.
		if b.rejoin > 0 {
			b.rejoin--
		}
		if b.inflight < b.pipelines && (b.inflight == 0 || b.rejoin == 0) {
			batch = b.take()
		}
	}
	if batch == nil {
		b.mu.Unlock()
		return b.wait(ctx, c)
	}
	b.inflight++
	b.trips.Add(1)
	b.mu.Unlock()
	if ctx.Done() != nil {
		go b.trip(batch)
		return b.wait(ctx, c)
	}
	// Nothing can make this caller return before its answer, so it sends
	// the round trip itself, sparing a goroutine's start and wake-up (a
	// lone caller's p99 falls by a quarter); what queued meanwhile goes on
	// a goroutine.
	b.sendBatch(batch)
	if next := b.next(); next != nil {
		go b.trip(next)
	} else {
		b.trips.Done()
	}
	return b.wait(ctx, c)
}

// take removes up to maxBatch calls from the head of the queue; b.mu is
// held.
func (b *batcher) take() []*call {
	n := min(len(b.queue), b.maxBatch)
	batch := make([]*call, n)
	copy(batch, b.queue)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

// trip sends batch, then whatever queued meanwhile, until nothing is
// queued or the batcher is closed.
func (b *batcher) trip(batch []*call) {
	defer b.trips.Done()
	for batch != nil {
		b.sendBatch(batch)
		batch = b.next()
	}
}

// next is called when a round trip ends: it returns what the round trip
// sends next, or nil when the round trip is over.
func (b *batcher) next() []*call {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 || b.closed || b.pipelines < 0 {
		b.inflight--
		return nil
	}
	batch := b.take()
	if len(b.queue) > 0 && b.inflight < b.pipelines {
		// More waits than one pipeline carries: use a free one too.
		b.inflight++
		b.trips.Add(1)
		go b.trip(b.take())
	}
	return batch
}

// wait waits for c's answer, or for ctx to end: then the round trip owns c.
func (b *batcher) wait(ctx context.Context, c *call) (reply, error) {
	select {
	case <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(queued, abandoned) || c.state.CompareAndSwap(sent, abandoned) {
			return reply{}, ctx.Err() // the round trip owns c now
		}
		<-c.done // answered meanwhile
	}
	r, err := c.r, c.err
	c.release()
	return r, err
}

func (c *call) release() {
	c.req, c.key, c.args, c.err = driver.Request{}, "", nil, nil
	callPool.Put(c)
}

// sendBatch sends batch as one pipeline and hands out the answers.
func (b *batcher) sendBatch(batch []*call) {
	ctx := context.Background() // the client's timeouts bound the round trip
	ops := make([]op, 0, len(batch))
	live := batch[:0]
	for _, c := range batch {
		if !c.state.CompareAndSwap(queued, sent) {
			c.release() // abandoned before it was sent
			continue
		}
		live = append(live, c)
		ops = append(ops, op{c.key, c.args})
	}
	if len(live) == 0 {
		return
	}
	res := make([]result, len(ops))
	b.s.run(ctx, ops, res)
	// The callers answered now are expected back (see admit): in addition
	// to those expected already if callers are waiting, else alone.
	b.mu.Lock()
	if len(b.queue) > 0 {
		b.rejoin += len(live)
	} else {
		b.rejoin = len(live)
	}
	b.mu.Unlock()
	var refunds []driver.Admission
	for i, c := range live {
		c.r, c.err = res[i].r, res[i].err
		if c.state.CompareAndSwap(sent, done) {
			c.done <- struct{}{}
			continue
		}
		// Abandoned in flight: give back what Redis admitted.
		if c.err == nil && c.r.allowed {
			refunds = append(refunds, driver.Admission{Request: c.req, Decision: c.r.decision()})
		}
		c.release()
	}
	// After every caller has its answer, in one round trip.
	if len(refunds) > 0 {
		b.s.giveBack(ctx, refunds)
	}
}

// close waits for the round trips in flight, and answers the calls still
// queued with bucket.ErrClosed.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.trips.Wait()
	b.mu.Lock()
	queue := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, c := range queue {
		c.err = bucket.ErrClosed
		if c.state.CompareAndSwap(queued, done) {
			c.done <- struct{}{}
		}
	}
}
