package redisstore

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/redis/go-redis/v9"
)

// A batcher coalesces concurrent Admit calls: callers queue their
// admissions, and each of a few sender goroutines takes whatever is queued
// (up to maxBatch) and sends it as one pipeline. While a pipeline is in
// flight the next one fills, so the batch size follows the load: one
// admission per round trip for a lone caller, many under contention.
type batcher struct {
	s        *Store
	maxBatch int

	mu     sync.Mutex
	queue  []*call
	closed bool

	wake chan struct{} // a sender should look at the queue
	stop chan struct{}
	wg   sync.WaitGroup
}

// A call is one queued admission. Its state moves from queued to sent to
// done; the caller may abandon it (its ctx ended) from queued or sent, and
// then the sender gives back whatever Redis admitted.
type call struct {
	state atomic.Int32
	req   bucket.Request // for a refund if abandoned
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

func newBatcher(s *Store, senders, maxBatch int) *batcher {
	b := &batcher{
		s:        s,
		maxBatch: maxBatch,
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
	b.wg.Add(senders)
	for range senders {
		go b.send()
	}
	return b
}

// admit queues an admission and waits for its answer or for ctx to end.
func (b *batcher) admit(ctx context.Context, req *bucket.Request, key string, args []byte) (reply, error) {
	c := callPool.Get().(*call)
	c.state.Store(queued)
	c.req, c.key, c.args = *req, key, args
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		c.req, c.args = bucket.Request{}, nil
		callPool.Put(c)
		return reply{}, bucket.ErrClosed
	}
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default: // a wake-up is pending already
	}

	select {
	case <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(queued, abandoned) || c.state.CompareAndSwap(sent, abandoned) {
			return reply{}, ctx.Err() // the sender owns c now
		}
		<-c.done // answered meanwhile
	}
	r, err := c.r, c.err
	c.req, c.args, c.err = bucket.Request{}, nil, nil
	callPool.Put(c)
	return r, err
}

// send is a sender goroutine: it sends what is queued until stopped.
func (b *batcher) send() {
	defer b.wg.Done()
	var (
		batch []*call
		cmds  []*redis.Cmd
	)
	for {
		select {
		case <-b.wake:
		case <-b.stop:
			return
		}
		b.mu.Lock()
		n := min(len(b.queue), b.maxBatch)
		batch = append(batch[:0], b.queue[:n]...)
		rest := copy(b.queue, b.queue[n:])
		clear(b.queue[rest:])
		b.queue = b.queue[:rest]
		b.mu.Unlock()
		if rest > 0 {
			select {
			case b.wake <- struct{}{}:
			default:
			}
		}

		ctx := context.Background() // the client's timeouts bound the round trip
		cmds = cmds[:0]
		live := batch[:0]
		for _, c := range batch {
			if !c.state.CompareAndSwap(queued, sent) {
				c.req, c.args = bucket.Request{}, nil
				callPool.Put(c) // abandoned before it was sent
				continue
			}
			live = append(live, c)
			cmds = append(cmds, b.s.cmd(ctx, "evalsha", c.key, c.args))
		}
		if len(live) == 0 {
			continue
		}
		b.s.pipeline(ctx, cmds)
		for i, c := range live {
			c.r, c.err = parseAdmit(cmds[i])
			if c.state.CompareAndSwap(sent, done) {
				c.done <- struct{}{}
				continue
			}
			// Abandoned in flight: give back what Redis admitted.
			if c.err == nil && c.r.allowed {
				b.s.Refund(ctx, c.req, c.r.decision())
			}
			c.req, c.args = bucket.Request{}, nil
			callPool.Put(c)
		}
		clear(live)
		clear(cmds)
	}
}

// close stops the senders after their pipelines in flight, and answers
// the calls still queued with bucket.ErrClosed.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
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
