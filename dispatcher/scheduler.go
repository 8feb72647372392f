package dispatcher

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The scheduler admits jobs through the limiter before they take a worker.
//
// Each key has a FIFO of jobs; only its head asks the bucket, and only
// when a worker will be free to start it on time (see overbook), so an
// admitted job starts at its slot rather than queueing behind busy workers
// (which would bunch starts up).
// Ready keys are served round-robin and decided in batches (one backend
// round trip for many keys). A job booked a little ahead waits in a timer
// heap for its slot while its key asks for the next job, so a fast key
// keeps up to a booking window of slots booked; a key its bucket refuses
// waits in another heap until shortly before its next slot. Neither holds
// up any other key.
type scheduler[T, R any] struct {
	d       *Dispatcher[T, R]
	backend driver.Backend // the limiter's

	mu      sync.Mutex // before any Future's mutex, never after
	keys    map[string]*keyState[T, R]
	ready   ring[*keyState[T, R]]
	timers  timerHeap[*keyState[T, R]] // waiting keys, by when they may ask again
	slots   timerHeap[*job[T, R]]      // booked jobs, by slot
	handed  []*job[T, R]               // handed to workers, to be delivered (see takeHanded)
	wake    chan struct{}
	stopped bool
	swept   int64
	seq     uint64

	afterAdmit func() // a test hook: stalls the scheduler after a batch is decided
	requeuing  func() // a test hook: runs as a worker is about to queue a retry-after job again

	// idle and waiting change under mu, except that workers give back
	// their place and their reservation without it. Workers write both
	// for every job, so each has a cache line of its own; room, read with
	// waiting, shares waiting's.
	_       [64]byte
	idle    atomic.Int64 // workers neither running a job nor reserved for one
	_       [64]byte     // waiting at a multiple of 32 bytes: room shares its line
	waiting atomic.Int64 // accepted jobs that have not started: the queue's occupancy
	room    roomSignal   // Submit calls waiting for a place
	_       [32]byte

	rtt atomic.Int64 // moving average of an admission batch's round trip
	lag atomic.Int64 // moving average of how late jobs reach their workers
	run atomic.Int64 // moving average of a handler's run
}

// window is how far ahead jobs are booked: the configured window, or four
// backend round trips if that is more, so that a refused key that asks
// again half a window before its slot is answered in time to book the
// slot itself even on a slow backend.
func (s *scheduler[T, R]) window() time.Duration {
	return max(s.d.cfg.bookAhead, time.Duration(4*s.rtt.Load()))
}

// ran records how long a handler ran.
func (s *scheduler[T, R]) ran(d int64) {
	s.run.Store(s.run.Load() + (d-s.run.Load())/8)
}

// overbook is how many jobs may be admitted beyond the free workers, to
// wait in the run queue for the next free one: as many as the workers get
// through in a quarter of the lateness tolerance at the handlers' usual
// run time, at most a batch. Admitting ahead lets the scheduler decide in
// batches instead of one job per freed worker; admitting further ahead
// than that would have jobs reach their workers late, give their
// admission back and ask again (on SQLite and Redis, a round trip each).
func (s *scheduler[T, R]) overbook() int64 {
	run := max(s.run.Load(), 1)
	return min(int64(s.d.cfg.workers)*int64(s.d.cfg.lateness)/4/run, int64(s.d.cfg.batch))
}

type phase uint8

const (
	keyIdle      phase = iota // no job queued
	keyReady                  // in the ready ring
	keyAsking                 // its head's admission is being decided
	keyWaiting                // refused, paused or backing off: in the timer heap
	keyRefunding              // giving back a booking: asks nothing until the refund is done
)

type keyState[T, R any] struct {
	name     string
	jobs     jobList[T, R] // queued, in submission order
	booked   jobList[T, R] // admitted ahead, in slot order
	phase    phase
	asking   *job[T, R]
	wakeAt   int64
	heapIdx  int
	paused   int64 // a retry-after seen by this process: admit nothing before
	backoff  time.Duration
	lastUsed int64
	stats    *keyCounters
	// returned counts the times the key was paused or had a job go back to
	// its queue: a handed job that sees it changed since it was handed
	// checks, under mu, that it still comes first (see late).
	returned atomic.Uint64
}

func newScheduler[T, R any](d *Dispatcher[T, R]) *scheduler[T, R] {
	s := &scheduler[T, R]{
		d:       d,
		backend: d.lim.Backend(),
		keys:    make(map[string]*keyState[T, R]),
		wake:    make(chan struct{}, 1),
	}
	s.idle.Store(int64(d.cfg.workers))
	// Until handlers have been timed, assume they take an eighth of the
	// tolerance: two jobs per worker ahead, not a batch.
	s.run.Store(int64(d.cfg.lateness) / 8)
	return s
}

func (s *scheduler[T, R]) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *scheduler[T, R]) key(name string) *keyState[T, R] {
	k := s.keys[name]
	if k == nil {
		k = &keyState[T, R]{name: name, heapIdx: -1, stats: new(keyCounters)}
		s.keys[name] = k
	}
	return k
}

// enqueue adds j at the tail of its key's queue, waiting for room if block.
func (s *scheduler[T, R]) enqueue(ctx context.Context, j *job[T, R], block bool) error {
	s.mu.Lock()
	for s.waiting.Load() >= int64(s.d.cfg.queue) {
		if !block {
			s.mu.Unlock()
			return ErrQueueFull
		}
		room := s.room.wait()
		if s.waiting.Load() < int64(s.d.cfg.queue) {
			continue // a place freed before the wait was seen
		}
		s.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.d.closing:
			return ErrClosed
		}
		s.mu.Lock()
	}
	s.waiting.Add(1)
	s.d.pending.Add(1)
	s.d.stats.submitted.Add(1)
	k := s.key(j.info.Key)
	k.stats.submitted.Add(1)
	j.ks = k
	s.seq++
	j.seq = s.seq
	j.setState(queued)
	k.jobs.pushBack(j)
	if k.phase == keyIdle {
		s.makeReady(k)
	}
	if ctx.Done() != nil {
		j.watch(context.AfterFunc(ctx, func() { s.cancelWaiting(j) }))
	}
	wake := s.idle.Load() > -s.overbook()
	s.mu.Unlock()
	if wake {
		s.signal()
	}
	return nil
}

func (s *scheduler[T, R]) makeReady(k *keyState[T, R]) {
	k.phase = keyReady
	s.ready.push(k)
}

// settle gives k its phase, at now, after its head left it.
func (s *scheduler[T, R]) settle(k *keyState[T, R], now int64) {
	k.asking = nil
	k.lastUsed = now
	if k.jobs.n == 0 {
		k.phase = keyIdle
		return
	}
	if k.paused > k.lastUsed {
		s.wait(k, k.paused)
		return
	}
	s.makeReady(k)
}

func (s *scheduler[T, R]) wait(k *keyState[T, R], until int64) {
	k.phase = keyWaiting
	k.wakeAt = until
	s.timers.set(k)
}

// hand gives j to a worker reserved for it, once the caller lets go of
// mu (see takeHanded): sending can wake a worker, which should not keep
// submitters out of mu meanwhile. It still counts in the queue until the
// worker starts it.
func (s *scheduler[T, R]) hand(k *keyState[T, R], j *job[T, R]) {
	j.setState(running)
	j.ks, j.handedAt = k, k.returned.Load()
	s.handed = append(s.handed, j)
}

// takeHanded returns the jobs handed since it was last called, for the
// caller to deliver once it has let go of mu.
func (s *scheduler[T, R]) takeHanded() []*job[T, R] {
	js := s.handed
	s.handed = nil
	return js
}

// deliver sends handed jobs to the workers. The run queue has room for
// every job with a worker reserved, so the sends never block.
func (s *scheduler[T, R]) deliver(js []*job[T, R]) {
	for _, j := range js {
		s.d.run <- j
	}
}

// freed wakes blocked submitters once a sixteenth of the queue (at least
// one place) is free: waking them for every place that frees would cost a
// goroutine switch per job while a producer outpaces the workers. It needs
// no lock: room has its own.
func (s *scheduler[T, R]) freed() {
	if s.room.wanted.Load() && int64(s.d.cfg.queue)-s.waiting.Load() >= int64(max(1, s.d.cfg.queue/16)) {
		s.room.wake()
	}
}

// resolveWaiting resolves j, which has not started, with err, and gives
// back its place in the queue (waking a Submit blocked on a full queue).
// Called with s.mu held.
func (s *scheduler[T, R]) resolveWaiting(j *job[T, R], err error, o outcome) {
	j.setState(done)
	s.waiting.Add(-1)
	s.freed()
	s.d.finish(j, *new(R), err, o)
}

// started takes a job its worker is about to run out of the queue.
func (s *scheduler[T, R]) started() {
	s.waiting.Add(-1)
	s.freed()
}

func (s *scheduler[T, R]) loop() {
	defer s.d.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Up to `rounds` batches are decided at once, each on a goroutine of
	// its own: while the backend decides one, the next is collected and
	// sent, so a remote backend's round trips overlap. A key is in at most
	// one batch (it is asking), so its admissions stay in order.
	free := make(chan *round[T, R], rounds)
	for range rounds {
		free <- new(round[T, R])
	}
	var deciding sync.WaitGroup
	defer deciding.Wait() // before the run queue closes: apply sends on it
	for {
		var r *round[T, R]
		select {
		case r = <-free:
		default: // every round is being decided: one signals when it is done
		}
		s.mu.Lock()
		now := s.d.now()
		s.releaseDue(now)
		if r != nil {
			r.batch, r.asked = s.collect(r.batch[:0], r.asked[:0], now)
		}
		if now-s.swept > int64(time.Minute) {
			s.sweep(now)
		}
		next := int64(-1)
		for _, h := range [...]interface{ next() (int64, bool) }{s.timers, s.slots} {
			if at, ok := h.next(); ok && (next < 0 || at-now < next) {
				next = max(at-now, 0)
			}
		}
		handed := s.takeHanded()
		s.mu.Unlock()
		s.deliver(handed)

		if r != nil && len(r.batch) > 0 {
			deciding.Add(1)
			go func() {
				defer deciding.Done()
				s.decide(r)
				free <- r
				s.signal()
			}()
			continue
		}
		if r != nil {
			free <- r
		}
		var tick <-chan time.Time
		if next >= 0 {
			timer.Reset(time.Duration(next))
			tick = timer.C
		}
		select {
		case <-s.wake:
		case <-tick:
		case <-s.d.quit:
			return
		}
		timer.Stop()
	}
}

// rounds is how many batches may be decided at once.
const rounds = 2

// A round is a batch of admissions and the keys that asked for them.
type round[T, R any] struct {
	batch []driver.Admission
	asked []*keyState[T, R]
}

// decide has the backend decide r's batch and acts on the decisions.
func (s *scheduler[T, R]) decide(r *round[T, R]) {
	before := s.d.now()
	driver.AdmitBatch(s.d.base, s.backend, r.batch)
	after := s.d.now()
	// Track the round trip: a job may start that much after the backend
	// decided without being late.
	s.rtt.Store(s.rtt.Load() + (after-before-s.rtt.Load())/8)
	s.mu.Lock()
	stall := s.afterAdmit
	s.mu.Unlock()
	if stall != nil {
		stall()
	}
	s.apply(r.batch, r.asked, before, after)
	clear(r.batch) // drop the limits' quota slices
	clear(r.asked)
}

// releaseDue hands booked jobs whose slot has come to their workers and
// makes waiting keys whose time has come ready.
func (s *scheduler[T, R]) releaseDue(now int64) {
	for at, ok := s.slots.next(); ok && at <= now; at, ok = s.slots.next() {
		j := heap.Pop(&s.slots).(*job[T, R])
		k := s.keys[j.info.Key]
		k.booked.remove(j)
		s.hand(k, j)
	}
	for at, ok := s.timers.next(); ok && at <= now; at, ok = s.timers.next() {
		k := heap.Pop(&s.timers).(*keyState[T, R])
		if k.phase == keyWaiting {
			s.settle(k, now)
		}
	}
}

// collect takes the heads of ready keys, as many as there are free
// workers, reserving a worker for each. Heads of unlimited keys go
// straight to their worker.
func (s *scheduler[T, R]) collect(batch []driver.Admission, asked []*keyState[T, R], now int64) ([]driver.Admission, []*keyState[T, R]) {
	for s.idle.Load() > -s.overbook() && len(batch) < s.d.cfg.batch {
		k, ok := s.ready.pop()
		if !ok {
			break
		}
		if k.phase != keyReady {
			continue // left the ring while queued in it
		}
		j := k.jobs.popFront()
		if j == nil {
			k.phase = keyIdle
			continue
		}
		s.idle.Add(-1)
		lim := s.d.lim.Limit(k.name)
		if lim.IsUnlimited() {
			j.slot = 0
			s.hand(k, j)
			s.settle(k, now)
			continue
		}
		j.setState(asking)
		k.phase, k.asking = keyAsking, j
		batch = append(batch, driver.Admission{Request: driver.Request{
			Key: k.name, Limit: driverLimit(lim), Cost: j.cost, MaxWait: s.window(),
		}})
		asked = append(asked, k)
	}
	return batch, asked
}

// apply acts on the decisions of a batch sent at before and answered at
// after. The backend decided somewhere in between, so a slot is released
// no sooner than after+Wait (never early) and judged late from
// before+Wait (never lenient).
func (s *scheduler[T, R]) apply(batch []driver.Admission, asked []*keyState[T, R], before, after int64) {
	var (
		refunds []driver.Admission
		held    []*keyState[T, R] // asking nothing until the refunds are done
	)
	now := after
	s.mu.Lock()
	for i, k := range asked {
		a := &batch[i]
		j := k.asking
		k.asking = nil
		allowed := a.Err == nil && a.Decision.Allowed
		switch {
		case j.getState() != asking || s.stopped: // cancelled or stopped meanwhile
			if allowed {
				refunds = append(refunds, *a)
			}
			if j.getState() == asking {
				s.resolveWaiting(j, ErrClosed, outcomeCancelled)
			}
			s.idle.Add(1)
			if allowed && !s.stopped {
				k.phase = keyRefunding // held (see hold) until the refund is done
				held = append(held, k)
			} else {
				s.settle(k, now)
			}
		case a.Err != nil && permanent(a.Err):
			s.idle.Add(1)
			s.resolveWaiting(j, a.Err, outcomeFailed)
			s.settle(k, now)
		case a.Err != nil: // the backend failed: keep the job, try again later
			s.d.stats.backendErrors.Add(1)
			s.d.stats.setBackendErr(a.Err)
			k.backoff = min(max(2*k.backoff, 10*time.Millisecond), time.Second)
			s.putBack(k, j, now+int64(k.backoff))
		case allowed && k.paused > now: // a retry-after arrived meanwhile
			refunds = append(refunds, *a)
			s.putBack(k, j, k.paused)
		case allowed && k.jobs.head != nil && k.jobs.head.seq < j.seq: // an earlier job came back meanwhile
			refunds = append(refunds, *a)
			s.putBack(k, j, now)
		case allowed:
			k.backoff = 0
			j.lim, j.dec = a.Limit, a.Decision
			j.slot = before + int64(a.Decision.Wait)
			if a.Decision.Wait <= 0 {
				s.hand(k, j)
			} else {
				j.setState(booked)
				j.releaseAt = after + int64(a.Decision.Wait)
				k.booked.pushBack(j)
				s.slots.set(j)
			}
			s.settle(k, now) // ask for the next job: it may fit in the booking window too
		default:
			// Ask again half a booking window before the slot opens, so
			// that the next admission books the slot itself: asking when
			// it opens would start late by the timer's latency and lose
			// that much of the rate at every step.
			k.stats.throttled.Add(1)
			s.putBack(k, j, now+int64(a.Decision.Wait)-int64(s.window()/2))
		}
	}
	handed := s.takeHanded()
	s.mu.Unlock()
	s.deliver(handed)
	s.refund(refunds)
	if len(held) > 0 {
		s.mu.Lock()
		for _, k := range held {
			s.resume(k)
		}
		s.mu.Unlock()
		s.signal()
	}
}

// putBack returns j to the head of k's queue, frees its worker, and makes
// k wait until the given time.
func (s *scheduler[T, R]) putBack(k *keyState[T, R], j *job[T, R], until int64) {
	j.setState(queued)
	k.jobs.insert(j)
	s.idle.Add(1)
	s.wait(k, until)
}

func (s *scheduler[T, R]) refund(as []driver.Admission) {
	for _, a := range as {
		// A failed refund only under-admits: the booking stays charged.
		_ = s.backend.Refund(s.d.base, a.Request, a.Decision)
	}
}

// driverLimit returns lim as the backend sees it.
func driverLimit(lim bucket.Limit) driver.Limit {
	return driver.Limit{Rate: lim.Rate, Period: lim.Period, Burst: lim.Burst, Quotas: lim.Quotas}
}

// retryAfter reports the pause err asks for: any error in its chain that
// has a method RetryAfter() time.Duration (middleware.RetryAfterError,
// or a type of the caller's) asks for a pause of what it returns, never
// negative.
func retryAfter(err error) (time.Duration, bool) {
	var ra interface{ RetryAfter() time.Duration }
	if !errors.As(err, &ra) {
		return 0, false
	}
	return max(ra.RetryAfter(), 0), true
}

func permanent(err error) bool {
	return errors.Is(err, bucket.ErrInvalidLimit) || errors.Is(err, bucket.ErrImpossible) ||
		errors.Is(err, bucket.ErrInvalidCost) || errors.Is(err, bucket.ErrEmptyKey)
}

// cancelWaiting resolves a job whose context ended before it started. A
// booked job is resolved first and its booking given back after, so that
// neither its future nor a Submit waiting for its place waits for the
// backend's round trip. A job handed to a worker is resolved by late,
// when the worker meets it.
func (s *scheduler[T, R]) cancelWaiting(j *job[T, R]) {
	s.mu.Lock()
	switch j.getState() {
	case queued:
		s.keys[j.info.Key].jobs.remove(j)
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
	case booked:
		k := s.keys[j.info.Key]
		k.booked.remove(j)
		s.slots.remove(j)
		s.idle.Add(1)
		s.d.wg.Add(1) // while j is unresolved: Shutdown waits for the refund
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
		s.refundBooking(k, j)
		s.d.wg.Done()
	case asking:
		// apply sees the state and refunds the admission.
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
	}
	s.mu.Unlock()
	s.signal()
}

// tolerance is how late a job may reach its worker: a millisecond, plus
// twice the usual backend round trip (which no client can see inside),
// plus how late jobs usually reach their workers in this process (timer
// and goroutine wake-up latency), up to three more milliseconds. Jobs that
// are all late by the usual amount keep their spacing; only lateness beyond
// it bunches starts up, and that is what is refused. On a quiet machine the
// usual lateness is tens of microseconds; on a loaded one, refusing every
// job it delays would give most bookings back.
func (s *scheduler[T, R]) tolerance() int64 {
	lateness := int64(s.d.cfg.lateness)
	return lateness + 2*s.rtt.Load() + min(s.lag.Load(), 3*lateness)
}

// late reports whether j, handed to a worker, must not start: its
// context ended while it waited for the worker (it is resolved with the
// context's error); its key fell behind it meanwhile (a retry-after paused
// the key, or an earlier job of the key went back to its queue); or it
// reached the worker longer after its slot than the tolerance allows (a
// stalled process, scheduler or worker), and starting it now could bunch
// it up with jobs admitted after it. Unless cancelled, it waits at the
// head of its key's queue for a new admission, and the key's bookings go
// back behind it, so that the key's jobs still start in order. Either way
// the key's latest admission is given back (if no later one depends on
// it) by a goroutine of its own: the worker goes on at once to the next
// job, which would otherwise reach it late too while it waited a backend
// round trip for the refund. Only a job whose key was paused or set back
// since it was handed takes the scheduler's lock to decide.
func (s *scheduler[T, R]) late(j *job[T, R], now int64) bool {
	if j.slot == 0 || s.d.stopped.Load() {
		return false
	}
	cancelled := j.watched && j.parent.Err() != nil
	lateness := now - j.slot
	tolerance := s.tolerance()
	// A stall's outlier moves the usual lateness by at most half a
	// millisecond. A sample of jobs is enough for the average, and spares
	// the workers' cores from passing its cache line around.
	if j.seq%8 == 0 {
		s.lag.Store(s.lag.Load() + (min(max(lateness, 0), 4*int64(time.Millisecond))-s.lag.Load())/8)
	}
	if !cancelled && lateness <= tolerance && j.ks.returned.Load() == j.handedAt {
		return false // nothing set its key back since it was handed
	}
	s.mu.Lock()
	k := s.key(j.info.Key)
	behind := k.paused > now || k.jobs.head != nil && k.jobs.head.seq < j.seq
	if !cancelled && !behind && lateness <= tolerance {
		s.mu.Unlock()
		return false
	}
	// Counted while j is unresolved: Shutdown waits on wg only once every
	// job is resolved.
	s.d.wg.Add(1)
	var refund []driver.Admission
	j.slot = 0
	s.idle.Add(1) // j's worker reservation
	if cancelled {
		refund = []driver.Admission{j.admission()}
		s.resolveWaiting(j, j.parent.Err(), outcomeCancelled)
	} else {
		k.returned.Add(1)
		if lateness > tolerance {
			k.stats.late.Add(1)
		}
		j.setState(queued)
		k.jobs.insert(j)
		// The key's bookings go back behind it, so that its jobs still
		// start in order; their admissions and j's are given back.
		refund = s.unbook(k, j)
	}
	held := s.hold(k)
	s.mu.Unlock()
	go s.giveBack(k, refund, held)
	s.signal() // j's worker is free for other keys' jobs meanwhile
	return true
}

// unbook moves k's bookings back to its queue, freeing their workers,
// and returns the refunds that give back the latest booking's admission
// together with those of the bookings, and then of j (a job of k going
// back to the queue after it was handed; nil if none), made right before
// it (driver.Unbook). Called with s.mu held.
func (s *scheduler[T, R]) unbook(k *keyState[T, R], j *job[T, R]) []driver.Admission {
	var latestFirst []driver.Admission
	for b := k.booked.tail; b != nil; b = b.prev {
		latestFirst = append(latestFirst, b.admission())
	}
	if j != nil {
		latestFirst = append(latestFirst, j.admission())
	}
	for b := k.booked.popFront(); b != nil; b = k.booked.popFront() {
		s.slots.remove(b)
		b.setState(queued)
		b.slot = 0
		k.jobs.insert(b)
		s.idle.Add(1)
	}
	return driver.Unbook(latestFirst)
}

// giveBack refunds admissions of k, in order; if k was held for them, k
// may then ask again.
func (s *scheduler[T, R]) giveBack(k *keyState[T, R], as []driver.Admission, held bool) {
	defer s.d.wg.Done()
	s.refund(as)
	if !held {
		return
	}
	s.mu.Lock()
	s.resume(k)
	s.mu.Unlock()
	s.signal()
}

// refundBooking gives back j's admission. If no admission of k is in
// flight, k asks nothing until the refund is done: a booking made meanwhile
// would make the refund find a later booking and do nothing (a refund
// applies only to a key's latest admission). Called with s.mu held, which
// it releases during the refund.
func (s *scheduler[T, R]) refundBooking(k *keyState[T, R], j *job[T, R]) {
	held := s.hold(k)
	s.mu.Unlock()
	s.refund([]driver.Admission{j.admission()})
	s.mu.Lock()
	if held {
		s.resume(k)
	}
}

// hold makes k ask nothing while an admission of it is refunded: an
// admission made first would make the refund find a later one and do
// nothing. It reports false if k cannot be held: its next admission is
// being decided, or another refund holds it. Called with s.mu held.
func (s *scheduler[T, R]) hold(k *keyState[T, R]) bool {
	if k.phase == keyAsking || k.phase == keyRefunding {
		return false
	}
	s.timers.remove(k)
	k.phase = keyRefunding
	return true
}

// resume lets a held key ask again, unless a hard stop has settled it
// meanwhile. Called with s.mu held.
func (s *scheduler[T, R]) resume(k *keyState[T, R]) {
	if k.phase == keyRefunding {
		s.settle(k, s.d.now())
	}
}

// admission returns the admission j was given.
func (j *job[T, R]) admission() driver.Admission {
	return driver.Admission{Request: driver.Request{Key: j.info.Key, Limit: j.lim, Cost: j.cost}, Decision: j.dec}
}

// requeue handles a handler error carrying a retry-after: the key is
// paused in the backend (for every process) and here, and the job goes
// back to the head of its key's queue. It reports whether it did, or the
// error to resolve the job with.
func (s *scheduler[T, R]) requeue(j *job[T, R], err error) (bool, error) {
	if err == nil {
		return false, nil
	}
	delay, ok := retryAfter(err)
	if !ok || s.d.stopped.Load() || j.parent.Err() != nil {
		return false, err
	}
	if j.info.Attempt > s.d.cfg.maxRequeues {
		return false, fmt.Errorf("%w (%d): %w", ErrTooManyRequeues, s.d.cfg.maxRequeues, err)
	}
	_ = s.d.lim.Pause(s.d.base, j.info.Key, delay) // the local pause below holds this process even if this fails
	until := s.d.now() + int64(delay)
	j.info.Attempt++
	j.slot = 0
	j.resetContext()

	if s.requeuing != nil {
		s.requeuing()
	}
	s.mu.Lock()
	if s.stopped {
		// A hard stop resolved the queues since the check above: queued
		// again, j would wait out the pause before anything resolved it.
		s.mu.Unlock()
		return false, err
	}
	k := s.key(j.info.Key)
	k.paused = max(k.paused, until)
	k.returned.Add(1)
	k.stats.retried.Add(1)
	s.d.stats.retried.Add(1)
	// Its booked jobs must not start during the pause.
	refund := s.unbook(k, nil) // j's request was made: its admission stays
	j.setState(queued)
	k.jobs.insert(j)
	s.waiting.Add(1)
	s.idle.Add(1)
	switch k.phase {
	case keyAsking, keyRefunding: // apply and refundBooking check k.paused when they settle
	case keyWaiting:
		s.wait(k, max(k.wakeAt, k.paused))
	default:
		s.wait(k, k.paused)
	}
	if j.watched {
		// Its run ended the watch on its context: waiting again, it is
		// watched again, so that it does not wait out the pause if its
		// context ends. Under s.mu, as in enqueue: it is still queued.
		j.watch(context.AfterFunc(j.parent, func() { s.cancelWaiting(j) }))
	}
	if len(refund) > 0 {
		s.d.wg.Add(1)
		go s.giveBack(k, refund, s.hold(k))
	}
	s.mu.Unlock()
	s.signal()
	return true, nil
}

// release frees the worker that ran or dropped a job. It wakes the
// scheduler once half the jobs admitted ahead have been taken, not for
// every job: the scheduler then admits the next batch while the other half
// keeps the workers busy.
func (s *scheduler[T, R]) release() {
	if s == nil {
		return
	}
	if s.idle.Add(1) >= -s.overbook()/2 {
		s.signal()
	}
}

// stop resolves every job that has not started with ErrClosed (a hard stop).
func (s *scheduler[T, R]) stop() {
	var refunds []driver.Admission
	s.mu.Lock()
	s.stopped = true
	for _, k := range s.keys {
		refunds = append(refunds, s.unbook(k, nil)...) // its bookings are resolved with the queue
		s.timers.remove(k)
		for j := k.jobs.popFront(); j != nil; j = k.jobs.popFront() {
			s.resolveWaiting(j, ErrClosed, outcomeCancelled)
		}
		if k.phase != keyAsking {
			k.phase = keyIdle
		}
	}
	s.mu.Unlock()
	s.refund(refunds)
}

// sweep forgets keys idle for a minute.
func (s *scheduler[T, R]) sweep(now int64) {
	s.swept = now
	for name, k := range s.keys {
		if k.phase == keyIdle && now-k.lastUsed > int64(time.Minute) {
			delete(s.keys, name)
		}
	}
}

// A ring is a FIFO of values backed by a slice that grows as needed.
type ring[E any] struct {
	buf  []E
	head int
	n    int
}

func (r *ring[E]) push(e E) {
	if r.n == len(r.buf) {
		buf := make([]E, max(16, 2*len(r.buf)))
		for i := range r.n {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
}

func (r *ring[E]) pop() (E, bool) {
	var zero E
	if r.n == 0 {
		return zero, false
	}
	e := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return e, true
}

// A timed value waits in a timerHeap: it knows when it is due (ties broken
// by sequence) and keeps its index there, so it can be moved or removed.
type timed interface {
	due() (at int64, seq uint64)
	heapIndex() *int
}

func (k *keyState[T, R]) due() (int64, uint64) { return k.wakeAt, 0 }
func (k *keyState[T, R]) heapIndex() *int      { return &k.heapIdx }
func (j *job[T, R]) due() (int64, uint64)      { return j.releaseAt, j.seq }
func (j *job[T, R]) heapIndex() *int           { return &j.heapIdx }

// A timerHeap orders values by when they are due: the scheduler keeps one
// of waiting keys and one of booked jobs.
type timerHeap[E timed] []E

func (h timerHeap[E]) Len() int { return len(h) }
func (h timerHeap[E]) Less(i, j int) bool {
	a, as := h[i].due()
	b, bs := h[j].due()
	return a < b || a == b && as < bs
}
func (h timerHeap[E]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	*h[i].heapIndex(), *h[j].heapIndex() = i, j
}
func (h *timerHeap[E]) Push(x any) {
	e := x.(E)
	*e.heapIndex() = len(*h)
	*h = append(*h, e)
}
func (h *timerHeap[E]) Pop() any {
	old := *h
	e := old[len(old)-1]
	var zero E
	old[len(old)-1] = zero
	*h = old[:len(old)-1]
	*e.heapIndex() = -1
	return e
}

// set puts e in the heap at its due time, or moves it there.
func (h *timerHeap[E]) set(e E) {
	if i := *e.heapIndex(); i >= 0 {
		heap.Fix(h, i)
		return
	}
	heap.Push(h, e)
}

// remove takes e out of the heap if it is there.
func (h *timerHeap[E]) remove(e E) {
	if i := *e.heapIndex(); i >= 0 {
		heap.Remove(h, i)
	}
}

// next returns when the first value is due, or false if the heap is empty.
func (h timerHeap[E]) next() (int64, bool) {
	if len(h) == 0 {
		return 0, false
	}
	at, _ := h[0].due()
	return at, true
}
