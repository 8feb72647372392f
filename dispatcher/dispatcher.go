// Package dispatcher runs typed jobs on a bounded worker pool. With a
// limiter, every job is first admitted by its key's leaky bucket, in a
// scheduler, before it takes a worker: a throttled key waits in a timer
// heap and never holds up the others, and what the rate-limited service
// sees — the start times of handler calls — conforms to each key's limit.
//
//	d, err := dispatcher.New(fetch, func(r Request) string { return r.Tenant },
//		dispatcher.WithWorkers(16),
//		dispatcher.WithLimiter(limiter))
//	...
//	res, err := d.Do(ctx, req)
//	...
//	err = d.Shutdown(ctx)
//
// Every accepted job is resolved exactly once. Submit blocks while the
// queue is full; Shutdown drains what is queued as the limits admit it.
// Each handler's context carries its job's key and attempt
// (jobinfo.FromContext). With a limiter, a handler error with a method
// RetryAfter() time.Duration (middleware.RetryAfterError has one) pauses
// the job's key in the limiter's backend, for every process sharing it,
// and puts the job back at the head of its key's queue; without one, it
// fails the job like any other error.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
)

// A Handler processes one job. Its context carries the job's key and
// attempt (jobinfo.FromContext) and ends when the job's does. It is a
// plain function type, the one package middleware wraps.
type Handler[T, R any] = func(ctx context.Context, job T) (R, error)

// A Dispatcher runs jobs of type T through a handler that returns R. It
// is safe for concurrent use. A queued job holds no goroutine and costs
// about 250 bytes. With a limiter, a key costs about 170 bytes more while
// it has jobs waiting, and nothing once they have all started (its
// bucket lives on in the limiter's backend); WithKeyStats(max) keeps
// 1.3 KiB of figures for each of up to max keys, mostly an admission-wait
// histogram, until a minute after the key's last job.
type Dispatcher[T, R any] struct {
	handler Handler[T, R]
	keyOf   func(T) string
	costOf  func(T) int
	lim     *bucket.Limiter
	cfg     config
	epoch   time.Time

	// run carries jobs to workers. Without a limiter it is the queue
	// itself (capacity cfg.queue); with one it holds only admitted jobs,
	// each with a worker reserved for it (capacity cfg.workers).
	run chan *job[T, R]

	closing     chan struct{} // closed when intake starts closing: wakes blocked submitters
	closingOnce sync.Once
	sealed      atomic.Bool // intake closed and no Submit in flight

	sched *scheduler[T, R] // nil without a limiter

	// Submitters write intake, submitters and workers pending: each on a
	// cache line of its own, apart from what workers only read.
	_       [64]byte
	intake  sync.RWMutex // read-held while submitting; write-held to close intake
	closed  bool         // guarded by intake
	_       [64]byte
	pending atomic.Int64 // accepted, unresolved
	_       [56]byte

	// Without a limiter, at most places jobs are accepted and unresolved
	// (the queue plus the workers); Submit waits for one on room.
	places int64
	room   roomSignal

	drained   chan struct{}
	drainOnce sync.Once
	stopped   atomic.Bool // a hard stop began
	crew      []worker[T, R]

	base     context.Context // for backend calls; cancelled on hard stop
	stopBase context.CancelFunc
	quit     chan struct{}  // stops the scheduler
	wg       sync.WaitGroup // the scheduler, and its give-backs of late admissions
	workers  sync.WaitGroup
	stopOnce sync.Once
	hardOnce sync.Once

	stats counters
}

// New returns a Dispatcher that runs h, on workers that start at once;
// stop them with Shutdown or Close. key gives each job its key: the queue
// it waits in, and with a limiter the bucket that admits it; jobs of one
// key start in submission order. A nil key gives every job the key
// "default". key is called once per Submit and must be safe for
// concurrent use.
func New[T, R any](h Handler[T, R], key func(T) string, opts ...Option) (*Dispatcher[T, R], error) {
	return newDispatcher(h, key, nil, opts)
}

// NewWithCost is New for jobs of different sizes: cost gives each job its
// cost in bucket units (tokens, bytes, rows), 1 for New. A cost below 1
// fails the job's Submit with bucket.ErrInvalidCost, and a cost its key's
// limit can never admit fails the job with a *bucket.CostError.
func NewWithCost[T, R any](h Handler[T, R], key func(T) string, cost func(T) int, opts ...Option) (*Dispatcher[T, R], error) {
	if cost == nil {
		return nil, errors.New("dispatcher: NewWithCost: nil cost function")
	}
	return newDispatcher(h, key, cost, opts)
}

func newDispatcher[T, R any](h Handler[T, R], key func(T) string, cost func(T) int, opts []Option) (*Dispatcher[T, R], error) {
	if h == nil {
		return nil, errors.New("dispatcher: New: nil handler")
	}
	cfg := defaults()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("dispatcher: New: option %d is nil", i)
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	if key == nil {
		key = func(T) string { return "default" }
	}
	d := &Dispatcher[T, R]{
		handler: h,
		keyOf:   key,
		costOf:  cost,
		lim:     cfg.limiter,
		cfg:     cfg,
		epoch:   time.Now().Add(-time.Nanosecond), // see now
		closing: make(chan struct{}),
		drained: make(chan struct{}),
		crew:    make([]worker[T, R], cfg.workers),
		quit:    make(chan struct{}),
	}
	d.base, d.stopBase = context.WithCancel(context.Background())
	if d.lim != nil {
		d.run = make(chan *job[T, R], cfg.workers+cfg.batch) // free workers, plus those overbooked (see scheduler.overbook)
		d.sched = newScheduler(d)
		d.wg.Add(1)
		go d.sched.loop()
		if d.sched.leases != nil {
			go d.sched.renewLeases() // stopped by Shutdown after the workers (stopRenewing)
		}
	} else {
		// The channel is the queue, but its places are counted by pending,
		// not by its capacity: a job whose context ends while it waits is
		// resolved at once and gives its place back, though it stays in
		// the channel until a worker skips it. The channel has room for a
		// queue of such jobs besides.
		d.places = int64(cfg.queue + cfg.workers)
		d.run = make(chan *job[T, R], 2*cfg.queue+cfg.workers)
	}
	d.workers.Add(cfg.workers)
	for w := range cfg.workers {
		go d.work(w)
	}
	return d, nil
}

// now is the dispatcher's clock: monotonic nanoseconds since New.
// It starts at 1, not 0: a slot of 0 marks a job no bucket admitted.
func (d *Dispatcher[T, R]) now() int64 { return int64(time.Since(d.epoch)) }

// Submit queues job and returns its future. It blocks while the queue is
// full, until there is room, ctx ends (ctx's error) or the dispatcher
// closes (ErrClosed). ctx belongs to the job: its values reach the
// handler, and if it ends before the job starts the job is resolved with
// its error, its place freed and any booked admission refunded.
func (d *Dispatcher[T, R]) Submit(ctx context.Context, job T) (*Future[R], error) {
	return d.submit(ctx, job, true)
}

// TrySubmit is Submit without blocking: it returns ErrQueueFull at once
// when the queue has no room.
func (d *Dispatcher[T, R]) TrySubmit(ctx context.Context, job T) (*Future[R], error) {
	return d.submit(ctx, job, false)
}

// Do submits job and waits for its result. If ctx ends first, the job is
// cancelled (if it has not started) and ctx's error returned.
func (d *Dispatcher[T, R]) Do(ctx context.Context, job T) (R, error) {
	f, err := d.Submit(ctx, job)
	if err != nil {
		var zero R
		return zero, err
	}
	return f.Wait(ctx)
}

// submit queues a job.
func (d *Dispatcher[T, R]) submit(ctx context.Context, in T, block bool) (*Future[R], error) {
	if ctx == nil {
		return nil, errors.New("dispatcher: nil context")
	}
	j := &job[T, R]{parent: ctx, in: in, cost: 1, heapIdx: -1}
	if ctx.Done() != nil {
		j.state = watchedBit
	}
	j.info.Attempt = 1
	if j.info.Key = d.keyOf(in); j.info.Key == "" {
		return nil, fmt.Errorf("dispatcher: job key: %w", bucket.ErrEmptyKey)
	}
	if d.costOf != nil {
		if j.cost = int64(d.costOf(in)); j.cost < 1 {
			return nil, fmt.Errorf("dispatcher: job cost %d: %w", j.cost, bucket.ErrInvalidCost)
		}
	}
	d.intake.RLock()
	defer d.intake.RUnlock()
	if d.closed {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.queuedAt(d.now())
	if d.sched != nil {
		if err := d.sched.enqueue(ctx, j, block); err != nil {
			return nil, err
		}
		return &j.Future, nil
	}
	for !d.take() {
		if !block {
			return nil, ErrQueueFull
		}
		if err := d.waitRoom(ctx); err != nil {
			return nil, err
		}
	}
	d.stats.submitted.Add(1)
	select {
	case d.run <- j: // the common case, without a select's full cost
	default: // a queue of skipped jobs fills the channel: wait for the workers
		select {
		case d.run <- j:
		case <-ctx.Done():
			d.unaccept()
			return nil, ctx.Err()
		case <-d.closing:
			d.unaccept()
			return nil, ErrClosed
		}
	}
	if ctx.Done() != nil {
		// Without a limiter the job waits in the run channel; if its
		// context ends there, it is resolved at once and skipped by the
		// worker that meets it.
		j.watch(context.AfterFunc(ctx, func() {
			if j.stateCAS(queued, done) {
				d.finish(j, *new(R), j.parent.Err(), outcomeCancelled)
			}
		}))
	}
	return &j.Future, nil
}

type outcome uint8

const (
	outcomeSucceeded outcome = iota
	outcomeFailed
	outcomeCancelled
)

// finish resolves j; every resolution goes through here or finishRun.
func (d *Dispatcher[T, R]) finish(j *job[T, R], val R, err error, o outcome) {
	d.finishRun(j, val, err, o, &d.stats.jobCounters)
}

// finishRun resolves j and counts its outcome in c: a worker counts the
// jobs it ran in its own counters, which no other core writes.
func (d *Dispatcher[T, R]) finishRun(j *job[T, R], val R, err error, o outcome, c *jobCounters) {
	j.unwatchCtx()
	// Counted first: whoever sees the job resolved (Do returning) then
	// finds it in Stats and KeyStats.
	c.outcome(o).Add(1)
	if j.stats != nil {
		j.stats.outcome(o).Add(1)
	}
	if j.rerun != nil {
		j.rerun.cancel() // lets go of the parent
	}
	if !j.resolve(val, err) {
		panic("dispatcher: job resolved twice") // a bug in this package
	}
	if sc, ok := j.parent.(*streamContext[T, R]); ok {
		sc.finished(j)
	}
	if d.pending.Add(-1) == 0 {
		d.checkDrained()
	}
	d.room.wake()
}

// checkDrained closes drained once intake is sealed (no Submit can add a
// job) and every accepted job is resolved.
func (d *Dispatcher[T, R]) checkDrained() {
	if d.sealed.Load() && d.pending.Load() == 0 {
		d.drainOnce.Do(func() { close(d.drained) })
	}
}
