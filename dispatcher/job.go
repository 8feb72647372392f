package dispatcher

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/jobinfo"
)

type jobState uint32

const (
	queued  jobState = iota // in its key's list (or the run channel without a limiter)
	asking                  // its admission is being decided
	booked                  // admitted, waiting for its slot
	running                 // handed to a worker
	done                    // resolved

	stateBits jobState = 1<<ctxShift - 1 // the state proper; above it:

	// ctxBits say how the handler context ended, if it has: ctxCanceled
	// (its run ended, or a hard stop) or ctxParent (its parent's error,
	// Canceled or DeadlineExceeded, is its own). Changed under Future.mu.
	ctxShift             = 29
	ctxCanceled jobState = 1 << ctxShift
	ctxParent   jobState = 2 << ctxShift
	ctxBits     jobState = ctxCanceled | ctxParent

	// watchedBit marks a job whose parent context can end: it is watched
	// while it waits. Set when the job is made, never changed.
	watchedBit jobState = 1 << 31
)

// A job is one submitted job: its future, its place in its key's queue,
// its admission, and the context its handler runs with. One allocation
// holds all of it.
//
// The job is itself the handler's context: values and deadline come from
// the context given to Submit, and it is done when that context is, when
// the run ends, or on a hard stop. Its channel and the watch on the parent
// are made only if the handler asks for Done, so a handler that never
// selects on its context costs no allocation for it.
type job[T, R any] struct {
	Future[R]
	parent  context.Context
	in      T
	info    jobinfo.Info // its first run's key, attempt and wait (queuedAt), which its handler context answers for
	cost    int64
	stats   *keyCounters // its key's figures, WithKeyStats
	prev    *job[T, R]
	next    *job[T, R]
	unwatch func() bool // stops the watch on parent while the job waits; guarded by Future.mu

	// The admission, from when it is decided until the job runs: what a
	// refund needs (driver.Decision's start and booking, and the limit,
	// shared with the key's other jobs), and when the job may start.
	lim       *limit
	booking   driver.Booking
	start     int64 // the admitted start, in the backend's time base
	slot      int64 // dispatcher clock at which the job may start; 0 if not admitted by a bucket
	releaseAt int64 // when a booked job is handed to a worker

	// What only a handler that asks for Done needs, made then; guarded
	// by Future.mu. How the context ended is in state's ctxBits.
	ctx *handlerContext
	// The context of the job's latest run if it was run again after a
	// retry-after: each run after the first has one of its own.
	rerun *rerunContext

	seq     uint64   // submission order, with a limiter
	state   jobState // with ctxBits and watchedBit
	heapIdx int32    // in the scheduler's heap of booked jobs
	// handed is its key's setBack slot (the top 8 bits) and that slot's
	// count when the job was handed to a worker (the low 24: a count 2²⁴
	// set-backs later looks the same, which no handoff lasts).
	handed uint32
	// lease numbers the job's admissions, for the lease ID of each under
	// an inflight cap (see leaseID): a give-back of an earlier admission's
	// lease can never release a later one's.
	lease uint32
}

// A rerunContext is the handler context of a job's run after a
// retry-after. The job is the context of its first run only: a goroutine
// that run left behind still holds it, and must see it stay ended, so
// each run after the first has a context of its own, derived from the
// job's parent, that answers for the job's key and attempt at that run.
type rerunContext struct {
	context.Context
	cancel   context.CancelFunc
	info     jobinfo.Info
	reporter bucket.Reporter // the job, if its limit learns
}

func (c *rerunContext) Value(key any) any {
	switch key.(type) {
	case jobinfo.ContextKey:
		return &c.info
	case bucket.ReporterKey:
		if c.reporter != nil {
			return c.reporter
		}
	}
	return c.Context.Value(key)
}

// runContext returns the context of j's current (or next) run.
func (j *job[T, R]) runContext() context.Context {
	if j.rerun != nil {
		return j.rerun
	}
	return j
}

// endRun ends the context of j's current run, with context.Canceled
// unless it ended already.
func (j *job[T, R]) endRun() {
	if j.rerun != nil {
		j.rerun.cancel()
		return
	}
	j.cancel(ctxCanceled)
}

// runAgain gives j a context of its own for its next run, with the next
// attempt. Called once the previous run has ended; the contexts of earlier
// runs keep their own Info, which goroutines they left behind may read.
func (j *job[T, R]) runAgain() {
	attempt := j.attempt() + 1
	if j.rerun != nil {
		j.rerun.cancel() // ended already; lets go of the parent
	}
	ctx, cancel := context.WithCancel(j.parent)
	j.rerun = &rerunContext{Context: ctx, cancel: cancel,
		info: jobinfo.Info{Key: j.info.Key, Attempt: attempt}, reporter: j.reporter()}
}

// runInfo returns the Info of j's current (or next) run: written only
// before that run starts.
func (j *job[T, R]) runInfo() *jobinfo.Info {
	if j.rerun != nil {
		return &j.rerun.info
	}
	return &j.info
}

// attempt returns the attempt of j's current (or next) run.
func (j *job[T, R]) attempt() int { return j.runInfo().Attempt }

// queuedAt records that j was queued at now (dispatcher clock): by Submit,
// or for its next run by a retry-after. Until that run starts, its Info's
// Waited holds this instant; no handler sees that Info before.
func (j *job[T, R]) queuedAt(now int64) { j.runInfo().Waited = time.Duration(now) }

// started records that j's run starts at now, and returns how long the job
// waited for it since queuedAt.
func (j *job[T, R]) started(now int64) time.Duration {
	info := j.runInfo()
	info.Waited = time.Duration(now) - info.Waited
	return info.Waited
}

// A handlerContext is what a job's context needs once its handler asks for
// Done: most handlers never do, and their jobs are smaller without it.
type handlerContext struct {
	done       chan struct{}
	stopParent func() bool
	afterFuncs map[*afterFunc]struct{}
}

type afterFunc struct{ f func() }

var _ context.Context = (*job[int, int])(nil)

func (j *job[T, R]) Deadline() (time.Time, bool) { return j.parent.Deadline() }

// Value answers jobinfo.ContextKey itself, so that a handler's context
// carries its job's key and attempt without a value of its own.
func (j *job[T, R]) Value(key any) any {
	switch key.(type) {
	case jobinfo.ContextKey:
		return &j.info
	case bucket.ReporterKey:
		if r := j.reporter(); r != nil {
			return r
		}
	}
	return j.parent.Value(key)
}

// reporter returns j as the bucket.Reporter of its run if its limit
// learns, else nil.
func (j *job[T, R]) reporter() bucket.Reporter {
	if j.lim == nil || j.lim.learner == nil {
		return nil
	}
	return j
}

// Report implements bucket.Reporter for j's run: its key's bucket learns
// fb, for the admission the run had (its booking's generation: answers
// to admissions decided before the key's last drop drop nothing again).
// Called by the handler, during its run.
func (j *job[T, R]) Report(_ context.Context, fb bucket.Feedback) bool {
	if j.lim == nil || j.lim.learner == nil {
		return false
	}
	return j.lim.learner.learn(j.info.Key, &j.lim.Limit, j.booking.Gen, fb, j.stats)
}

func (j *job[T, R]) Done() <-chan struct{} {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.ctx != nil {
		return j.ctx.done
	}
	if j.ended() {
		return closedChan
	}
	j.ctx = &handlerContext{done: make(chan struct{})}
	if j.parent.Err() != nil {
		j.setEnded(ctxParent)
		close(j.ctx.done)
	} else if j.parent.Done() != nil {
		j.ctx.stopParent = context.AfterFunc(j.parent, func() { j.cancel(ctxParent) })
	}
	return j.ctx.done
}

func (j *job[T, R]) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch j.loadState() & ctxBits {
	case ctxCanceled:
		return context.Canceled
	case ctxParent:
		return j.parent.Err() // which stays once set
	}
	if j.ctx != nil {
		return nil // the context watches its parent: not ended yet
	}
	return j.parent.Err()
}

// AfterFunc lets context.WithCancel and friends derive from a job without
// a goroutine each (the context package looks for this method).
func (j *job[T, R]) AfterFunc(f func()) (stop func() bool) {
	j.Done() // watch the parent
	a := &afterFunc{f: f}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.ended() {
		go f()
		return func() bool { return false }
	}
	c := j.ctx // made by Done above: it has not ended
	if c.afterFuncs == nil {
		c.afterFuncs = make(map[*afterFunc]struct{})
	}
	c.afterFuncs[a] = struct{}{}
	return func() bool {
		j.mu.Lock()
		defer j.mu.Unlock()
		_, ok := c.afterFuncs[a]
		delete(c.afterFuncs, a)
		return ok
	}
}

// cancel ends the handler context, with context.Canceled (ctxCanceled) or
// its parent's error (ctxParent); the first end wins.
func (j *job[T, R]) cancel(how jobState) {
	j.mu.Lock()
	if j.ended() {
		j.mu.Unlock()
		return
	}
	j.setEnded(how)
	var (
		stop func() bool
		fns  map[*afterFunc]struct{}
	)
	if c := j.ctx; c != nil {
		close(c.done)
		stop, fns = c.stopParent, c.afterFuncs
		c.stopParent, c.afterFuncs = nil, nil
	}
	j.mu.Unlock()
	if stop != nil {
		stop()
	}
	for a := range fns {
		go a.f()
	}
}

// watch records stop, which ends the watch on the job's context while it
// waits. If the job left the queue meanwhile, the watch ends at once.
func (j *job[T, R]) watch(stop func() bool) {
	j.mu.Lock()
	j.unwatch = stop
	j.mu.Unlock()
	if j.getState() != queued {
		j.unwatchCtx()
	}
}

// unwatchCtx ends the watch on the job's context, if any. From within the
// watch it does nothing.
func (j *job[T, R]) unwatchCtx() {
	if !j.watched() {
		return
	}
	j.mu.Lock()
	stop := j.unwatch
	j.unwatch = nil
	j.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// jobState is read and written atomically: without a limiter a worker and
// a context watch race for a queued job, and the handler context's end
// shares the word. Each change leaves the other bits as they are.
func (j *job[T, R]) stateCAS(from, to jobState) bool {
	for {
		old := j.loadState()
		if old&stateBits != from {
			return false
		}
		if j.casState(old, old&^stateBits|to) {
			return true
		}
	}
}

func (j *job[T, R]) setState(s jobState) { j.setBits(stateBits, s) }

func (j *job[T, R]) getState() jobState { return j.loadState() & stateBits }

// ended reports whether the handler context has ended; setEnded records
// how (0: it has not). Both with Future.mu held.
func (j *job[T, R]) ended() bool { return j.loadState()&ctxBits != 0 }

func (j *job[T, R]) setEnded(how jobState) { j.setBits(ctxBits, how) }

// setBits sets the bits of mask in j's state word to v.
func (j *job[T, R]) setBits(mask, v jobState) {
	for {
		old := j.loadState()
		if j.casState(old, old&^mask|v) {
			return
		}
	}
}

func (j *job[T, R]) casState(old, new jobState) bool {
	return atomic.CompareAndSwapUint32((*uint32)(&j.state), uint32(old), uint32(new))
}

// watched reports whether the job's parent context can end.
func (j *job[T, R]) watched() bool { return j.loadState()&watchedBit != 0 }

func (j *job[T, R]) loadState() jobState { return jobState(atomic.LoadUint32((*uint32)(&j.state))) }
