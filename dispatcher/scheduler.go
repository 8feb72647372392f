package dispatcher

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

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
	backend driver.Backend      // the limiter's
	leases  driver.LeaseBackend // the backend, if it keeps leases
	// leasePrefix starts the IDs of the leases this dispatcher takes
	// (leaseID): random, so that no other process's collide with them.
	leasePrefix string
	leased      map[*job[T, R]]struct{} // jobs admitted with a lease, until given back or run out; guarded by mu
	renewStop   chan struct{}           // closed by stopRenewing
	renewDone   chan struct{}           // closed when renewLeases returns

	mu      sync.Mutex // before any Future's mutex, never after
	keys    map[string]*keyState[T, R]
	ready   ring[*keyState[T, R]]
	timers  timerHeap[*keyState[T, R]] // waiting keys, by when they may ask again
	slots   timerHeap[*job[T, R]]      // booked jobs, by slot
	handed  []*job[T, R]               // handed to workers, to be delivered (see takeHanded)
	wake    chan struct{}
	stopped bool
	swept   int64
	seq     uint64 // the last job's submission order
	held    int64  // jobs queued in keys that wait (keyWaiting): Stats.Waiting, with the booked

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

	rtt   atomic.Int64 // moving average of an admission batch's round trip
	lag   atomic.Int64 // moving average of how late jobs reach their workers
	run   atomic.Int64 // moving average of a handler's run
	ahead atomic.Int64 // overbook's answer for run, computed as run changes

	// setBack counts, for the keys whose names hash to each slot, the
	// times a key was paused or had a job go back to its queue: a handed
	// job that sees its slot's count changed since it was handed checks,
	// under mu, that it still comes first (see late). A slot, not the key:
	// a key's state is dropped when its jobs have started, and a job keeps
	// no pointer to it; the name's slot is the same for every state of the
	// key. Workers read it for every job and it changes rarely, so it has
	// lines of its own.
	_       [64]byte
	setBack [setBackSlots]atomic.Uint32
	seed    maphash.Seed
	_       [64]byte

	peakKeys int               // most keys held since keys was made: Go's maps never shrink
	limits   limits            // guarded by mu
	statKeys int               // keys with figures (WithKeyStats)
	spare    []*keyState[T, R] // dropped keys, for new ones: a key idle between its jobs allocates nothing
}

// setBackSlots is how many counters the keys' set-backs are spread over,
// and setBackMask the bits of a count a job keeps (job.handed).
const (
	setBackSlots = 256
	setBackMask  = 1<<24 - 1
)

// maxSpare bounds the dropped keys kept for reuse (128 bytes each).
const maxSpare = 1024

type phase uint8

const (
	keyIdle      phase = iota // no job queued
	keyReady                  // in the ready ring
	keyAsking                 // its head's admission is being decided
	keyWaiting                // refused, paused or backing off: in the timer heap
	keyRefunding              // giving back a booking: asks nothing until the refund is done
)

// A keyState is a key's queue and phase. The scheduler holds one only
// while the key has jobs queued or booked, or is paused, or keeps figures
// (WithKeyStats): a key that goes idle costs nothing more (see dropIdle).
type keyState[T, R any] struct {
	name        string
	jobs        jobList[T, R] // queued, in submission order
	booked      jobList[T, R] // admitted ahead, in slot order
	asking      *job[T, R]
	wakeAt      int64
	paused      int64 // a retry-after seen by this process: admit nothing before
	backoff     time.Duration
	lastUsed    int64
	stats       *keyCounters
	heapIdx     int32
	phase       phase
	setBackSlot uint8 // its name's among the scheduler's setBack counters
	atCap       bool  // waiting because its leases were all held: a release here wakes it
	freed       bool  // one of its leases was released here while it asked
}

func newScheduler[T, R any](d *Dispatcher[T, R]) *scheduler[T, R] {
	s := &scheduler[T, R]{
		d:       d,
		backend: d.lim.Backend(),
		keys:    make(map[string]*keyState[T, R]),
		wake:    make(chan struct{}, 1),
		seed:    maphash.MakeSeed(),
	}
	s.leases, _ = s.backend.(driver.LeaseBackend)
	if lb, ok := s.backend.(driver.LearnBackend); ok {
		s.limits.learner = &learner{backend: lb, base: d.base, stats: &d.stats}
	}
	s.leasePrefix = string(driver.NewLeaseID()) + "."
	s.leased = make(map[*job[T, R]]struct{})
	s.renewStop, s.renewDone = make(chan struct{}), make(chan struct{})
	s.idle.Store(int64(d.cfg.workers))
	// Until handlers have been timed, assume they take an eighth of the
	// tolerance: two jobs per worker ahead, not a batch.
	s.ran(int64(d.cfg.lateness) / 8)
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
		if n := len(s.spare); n > 0 {
			k, s.spare = s.spare[n-1], s.spare[:n-1]
			*k = keyState[T, R]{name: name, heapIdx: -1}
		} else {
			k = &keyState[T, R]{name: name, heapIdx: -1}
		}
		k.setBackSlot = uint8(maphash.String(s.seed, name) % setBackSlots)
		if s.statKeys < s.d.cfg.keyStats {
			k.stats = new(keyCounters)
			s.statKeys++
		}
		s.keys[name] = k
		s.peakKeys = max(s.peakKeys, len(s.keys))
	}
	return k
}

// shrinkKeys makes the map of keys afresh once it holds a quarter of what
// it held at its peak, or nothing: a map keeps the room of its peak, so a
// burst of a million keys would otherwise keep tens of bytes per key
// after they have all been dropped. Called with s.mu held.
func (s *scheduler[T, R]) shrinkKeys() {
	if s.peakKeys < 1024 || len(s.keys) > s.peakKeys/4 {
		return
	}
	m := make(map[string]*keyState[T, R], len(s.keys))
	for name, k := range s.keys {
		m[name] = k
	}
	s.keys, s.peakKeys = m, len(m)
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
	if k.stats != nil {
		k.stats.submitted.Add(1)
	}
	j.stats = k.stats
	s.seq++
	j.seq = s.seq
	j.setState(queued)
	s.pushJob(k, j)
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
	s.setPhase(k, keyReady)
	s.ready.push(k)
}

// setPhase moves k to phase p, keeping count of the jobs queued in
// waiting keys (Stats.Waiting) as k enters or leaves keyWaiting.
func (s *scheduler[T, R]) setPhase(k *keyState[T, R], p phase) {
	switch {
	case k.phase == keyWaiting && p != keyWaiting:
		s.held -= int64(k.jobs.n)
	case k.phase != keyWaiting && p == keyWaiting:
		s.held += int64(k.jobs.n)
	}
	k.phase = p
}

// pushJob, insertJob, removeJob and popJob change k's queue, keeping count
// of the jobs queued in waiting keys.
func (s *scheduler[T, R]) pushJob(k *keyState[T, R], j *job[T, R]) {
	k.jobs.pushBack(j)
	s.countHeld(k, 1)
}

func (s *scheduler[T, R]) insertJob(k *keyState[T, R], j *job[T, R]) {
	k.jobs.insert(j)
	s.countHeld(k, 1)
}

func (s *scheduler[T, R]) removeJob(k *keyState[T, R], j *job[T, R]) {
	k.jobs.remove(j)
	s.countHeld(k, -1)
}

func (s *scheduler[T, R]) popJob(k *keyState[T, R]) *job[T, R] {
	j := k.jobs.popFront()
	if j != nil {
		s.countHeld(k, -1)
	}
	return j
}

func (s *scheduler[T, R]) countHeld(k *keyState[T, R], n int64) {
	if k.phase == keyWaiting {
		s.held += n
	}
}

// settle gives k its phase, at now, after its head left it.
func (s *scheduler[T, R]) settle(k *keyState[T, R], now int64) {
	k.asking = nil
	k.lastUsed = now
	if k.jobs.n == 0 {
		s.setPhase(k, keyIdle)
		s.dropIdle(k, now)
		return
	}
	if k.paused > k.lastUsed {
		s.wait(k, k.paused)
		return
	}
	s.makeReady(k)
}

func (s *scheduler[T, R]) wait(k *keyState[T, R], until int64) {
	s.setPhase(k, keyWaiting)
	k.wakeAt = until
	s.timers.set(k)
}

// hand gives j to a worker reserved for it, once the caller lets go of
// mu (see takeHanded): sending can wake a worker, which should not keep
// submitters out of mu meanwhile. It still counts in the queue until the
// worker starts it.
func (s *scheduler[T, R]) hand(k *keyState[T, R], j *job[T, R]) {
	j.setState(running)
	j.handed = uint32(k.setBackSlot)<<24 | s.setBack[k.setBackSlot].Load()&setBackMask
	s.handed = append(s.handed, j)
}

// setBackKey records that k was paused or had a job go back to its queue
// (see late).
func (s *scheduler[T, R]) setBackKey(k *keyState[T, R]) { s.setBack[k.setBackSlot].Add(1) }

// dropIdle forgets k, idle at now, unless it still holds something: jobs
// booked ahead, a pause, figures. k may then serve another key. Nothing
// else refers to an idle key but the ready ring, where a key that left
// the ring's phase stays until collect skips it: if it serves another key
// meanwhile, that key is merely ready twice, which collect tolerates (as
// it does a key held and resumed while in the ring). A job handed to a
// worker keeps its own admission (see late). Called with s.mu held.
func (s *scheduler[T, R]) dropIdle(k *keyState[T, R], now int64) {
	if k.phase == keyIdle && k.booked.n == 0 && k.heapIdx < 0 && k.paused <= now && k.stats == nil && s.keys[k.name] == k {
		delete(s.keys, k.name)
		if len(s.spare) < maxSpare {
			s.spare = append(s.spare, k)
		}
		if len(s.keys) == 0 {
			s.shrinkKeys() // at once when a burst is over; otherwise by sweep
		}
	}
}

// takeHanded returns the jobs handed since it was last called, for the
// caller to deliver once it has let go of mu, and keeps spare, the
// caller's slice from its last delivery, for the next ones: each caller
// keeps one slice, so handing allocates nothing.
func (s *scheduler[T, R]) takeHanded(spare []*job[T, R]) []*job[T, R] {
	js := s.handed
	s.handed = spare[:0]
	return js
}

// deliver sends handed jobs to the workers and returns js emptied, for
// takeHanded. The run queue has room for every job with a worker
// reserved, so the sends never block.
func (s *scheduler[T, R]) deliver(js []*job[T, R]) []*job[T, R] {
	for _, j := range js {
		s.d.run <- j
	}
	clear(js)
	return js[:0]
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
	// Up to `rounds` batches are decided at once, each by a goroutine of
	// its own: while the backend decides one, the next is collected and
	// sent, so a remote backend's round trips overlap. A key is in at most
	// one batch (it is asking), so its admissions stay in order.
	free := make(chan *round[T, R], rounds)
	todo := make(chan *round[T, R], rounds)
	var deciding sync.WaitGroup
	for range rounds {
		free <- new(round[T, R])
		deciding.Go(func() {
			for r := range todo {
				s.decide(r)
				free <- r
				s.signal()
			}
		})
	}
	defer deciding.Wait() // before the run queue closes: apply sends on it
	defer close(todo)
	var handed []*job[T, R]
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
		handed = s.takeHanded(handed)
		s.mu.Unlock()
		handed = s.deliver(handed)

		if r != nil && len(r.batch) > 0 {
			todo <- r // never blocks: at most rounds are out
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
	var refunds giving
	s.mu.Lock()
	s.stopped = true
	for _, k := range s.keys {
		refunds.add(s.unbook(k, nil)) // its bookings are resolved with the queue
		s.timers.remove(k)
		for j := s.popJob(k); j != nil; j = s.popJob(k) {
			s.resolveWaiting(j, ErrClosed, outcomeCancelled)
		}
		if k.phase != keyAsking {
			s.setPhase(k, keyIdle)
		}
	}
	s.mu.Unlock()
	s.refund(refunds)
}

// sweep forgets keys idle for a minute whose pause has ended: those
// dropIdle kept for their figures or their pause.
func (s *scheduler[T, R]) sweep(now int64) {
	s.swept = now
	for name, k := range s.keys {
		if k.phase == keyIdle && k.booked.n == 0 && k.paused <= now && now-k.lastUsed > int64(time.Minute) {
			delete(s.keys, name)
			if k.stats != nil {
				s.statKeys--
			}
		}
	}
	s.shrinkKeys()
}
