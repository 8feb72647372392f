package driver

import (
	"math/bits"
	"slices"
	"time"
)

// QuotaSlots is how many slots a quota window is divided into. Each slot
// counts the units whose admitted start falls in it, and a slot is counted
// against the quota until it lies wholly outside the window, so a unit is
// released at most Window/QuotaSlots after it leaves the exact rolling
// window: quotas never over-admit and under-admit by at most 1% of the
// window's time. A quota's state is at most QuotaSlots+1 slots, plus one
// for each slot booked further ahead than the window (MaxWait longer than
// the window), which each decision then walks.
const QuotaSlots = 100

// State is one key's bucket state, in a backend's clock ticks (nanoseconds
// for memory, microseconds for SQLite and Redis). The zero State is a fresh
// bucket. Backends store it; Decide, Refund and Pause change it. It is not
// safe for concurrent use: a backend changes it under its own lock or
// transaction.
type State struct {
	TAT    int64 // theoretical arrival time: the bucket's level is max(0, TAT-now)/T
	Paused int64 // nothing starts before this time
	Gen    int64 // counts admissions and refunds, so that a refund applies once, to the latest admission only
	Quotas []QuotaState
	// Learned is what a learned limit's key learned of the service's
	// limit (Learn); nil: nothing.
	Learned *Learned
}

// QuotaState is the per-slot usage of one quota, identified by its window.
type QuotaState struct {
	Window int64  // the window in ticks
	Slots  []Slot // ascending by Index, non-zero counts
}

// Slot counts the units admitted in [Index×w, (Index+1)×w), where w is the
// slot width ceil(Window/QuotaSlots).
type Slot struct {
	Index int64
	Count int64
}

// Terms are a request's numbers in ticks of a backend's clock, as Decide
// computes with them. A backend that decides elsewhere (a Redis script)
// takes them from here, so that it only adds and compares. Each is at
// most MaxDuration in ticks.
type Terms struct {
	// Charge is what the cost adds to the TAT: Cost × T, with T the
	// period in ticks, rounded up, over Rate, rounded up again.
	Charge int64
	// Capacity is how far ahead of now the TAT may lie for the request to
	// pass: (Burst − Cost) × T, less if Charge was clamped.
	Capacity int64
	// MaxWait is how far ahead the request may be booked: the request's
	// MaxWait in ticks, rounded down, and 0 if it is negative.
	MaxWait int64
	// Interval is T, the limit's emission interval, and Floor its floor's
	// (0 for a fixed limit). A key that learned a slower interval L
	// (Learned.Effective) is charged Cost × L, at most Span (MaxDuration
	// in ticks), and its capacity is Capacity, at most Span less that
	// charge.
	Interval, Floor, Span int64
}

// Terms returns req's terms in ticks of unit, for a valid request.
// Rounding T up to a tick rounds charge and capacity alike; where a
// product would pass MaxDuration, the charge is clamped (it still covers
// Cost × Period/Rate exactly) and the capacity shrinks with it.
func (r *Request) Terms(unit time.Duration) Terms {
	u := int64(unit)
	t, span, maxWait := r.interval(u)
	charge, capacity := r.charge(t, span)
	var floor int64
	if r.Limit.Learned() {
		_, floor = r.Limit.ticks(u)
	}
	return Terms{Charge: charge, Capacity: capacity, MaxWait: maxWait, Interval: t, Floor: floor, Span: span}
}

// interval returns T, the span (MaxDuration) and the request's MaxWait in
// ticks of u. It and charge are Terms in two parts small enough to inline,
// as Decide needs them to be: a call costs a decision 4% of its time.
func (r *Request) interval(u int64) (t, span, maxWait int64) {
	span, period, maxWait := int64(MaxDuration), int64(r.Limit.Period), max(int64(r.MaxWait), 0)
	if u != 1 { // spare the nanosecond clock three divisions
		span, period, maxWait = span/u, ceilDiv(period, u), maxWait/u
	}
	return ceilDiv(period, r.Limit.Rate), span, min(maxWait, span)
}

// charge returns the Charge and Capacity of Terms, given T and the span.
func (r *Request) charge(t, span int64) (charge, capacity int64) {
	charge = mulClamp(r.Cost, t, span)
	return charge, min(mulClamp(r.Limit.Burst-r.Cost, t, span), span-charge)
}

// Ticks returns d ≥ 0 in ticks of unit, rounded up: how backends convert
// windows and pauses, so that neither is ever shorter than asked.
func Ticks(d, unit time.Duration) int64 { return ceilDiv(int64(d), int64(unit)) }

// SlotWidth returns the width in ticks of the slots of a window of
// windowTicks ticks.
func SlotWidth(windowTicks int64) int64 { return ceilDiv(windowTicks, QuotaSlots) }

// Decide decides req against st at time now, both in ticks of unit, and
// charges st if the request is admitted. It is the mathematics every
// backend implements: a leaky bucket as a meter (GCRA) with rolling quotas
// and a pause. It allocates only when a key's quotas change shape or
// need more slots than they held before.
//
// The request is admissible at the earliest t ≥ now such that the level
// plus the cost fits the burst, t is past the pause, and every quota has
// room; it is admitted if that t is no later than now+MaxWait. Intervals
// are rounded up to whole ticks, so rounding never over-admits. For one
// state, now must never go backwards: slots of quotas are forgotten by it.
//
// A request of a capped limit (Limit.Inflight) returns ErrNoLeases: a
// backend that keeps leases decides it with DecideLeased.
func Decide(st *State, req *Request, unit time.Duration, now int64) (Decision, error) {
	if err := req.Validate(); err != nil {
		return Decision{}, err
	}
	if req.Limit.Inflight > 0 {
		return Decision{}, ErrNoLeases
	}
	u := int64(unit)
	lim := &req.Limit
	c := req.Cost
	t, span, maxWait := req.interval(u)
	charge, capacity := req.charge(t, span)
	if st.Learned != nil && lim.Learned() {
		// A slower interval charges more; the capacity stays the
		// limit's own, so that the limit's rate is never exceeded and a
		// slower key is paced rather than let through in bursts.
		if lt := learned(st, lim, t, now, u); lt != t {
			t, charge = lt, mulClamp(c, lt, span)
			capacity = min(capacity, span-charge)
		}
	}
	start := max(now, st.TAT-capacity, st.Paused)
	if len(st.Quotas)|len(lim.Quotas) != 0 {
		syncQuotas(st, lim, u)
	}
	for i := range st.Quotas {
		q := &st.Quotas[i]
		w := SlotWidth(q.Window)
		q.prune(floorDiv(now-q.Window, w))
		start = max(start, q.earliest(lim.Quotas[i].Max, c, start, w))
	}

	// Decisions are built whole at return: filling one in field by field
	// costs store-forwarding stalls on the hot path.
	if start-now > maxWait {
		return Decision{Wait: time.Duration((start - now) * u), Now: now * u, Interval: time.Duration(t * u)}, nil
	}
	prev := st.TAT
	st.TAT = max(st.TAT, start) + charge
	st.Gen++
	for i := range st.Quotas {
		q := &st.Quotas[i]
		q.add(floorDiv(start, SlotWidth(q.Window)), c)
	}
	return Decision{
		Allowed:  true,
		Wait:     time.Duration((start - now) * u),
		Now:      now * u,
		Booking:  Booking{TAT: st.TAT, Prev: prev, Gen: st.Gen},
		Interval: time.Duration(t * u),
	}, nil
}

// learned returns the interval a decision at now applies to a key of a
// learned limit that learned something, and forgets it once expired.
func learned(st *State, lim *Limit, t, now, u int64) int64 {
	l := st.Learned
	if now >= l.Until && now >= l.PaceUntil {
		st.Learned = nil
		return t
	}
	_, floor := lim.ticks(u)
	return l.Effective(t, floor, now)
}

// Refund gives back the admission d of req, with the semantics of
// Backend.Refund: only if it is the key's latest admission and nothing has
// been admitted or refunded since, which makes a second refund of the same
// admission, or of one a later admission depends on, a no-op. Refunding
// less than possible only ever under-admits.
func Refund(st *State, req *Request, d Decision, unit time.Duration) {
	if !d.Allowed || st.Gen != d.Booking.Gen || st.TAT != d.Booking.TAT {
		return
	}
	st.TAT = d.Booking.Prev
	st.Gen++
	u := int64(unit)
	start := d.Start() / u
	for _, quota := range req.Limit.Quotas {
		wt := ceilDiv(int64(quota.Window), u)
		for i := range st.Quotas {
			if q := &st.Quotas[i]; q.Window == wt {
				q.remove(floorDiv(start, SlotWidth(wt)), req.Cost)
			}
		}
	}
}

// Pause makes st admit nothing before until (in ticks). A pause never
// shortens one already in force.
func Pause(st *State, until int64) {
	st.Paused = max(st.Paused, until)
}

// FreshAt returns the tick from which st behaves as a fresh bucket: the
// backend may forget the key then.
func FreshAt(st *State) int64 {
	fresh := max(st.TAT, st.Paused)
	if l := st.Learned; l != nil {
		fresh = max(fresh, l.Until, l.PaceUntil)
	}
	for _, q := range st.Quotas {
		if n := len(q.Slots); n > 0 {
			w := SlotWidth(q.Window)
			fresh = max(fresh, (q.Slots[n-1].Index+1)*w+q.Window)
		}
	}
	return fresh
}

// syncQuotas lines st.Quotas up with lim.Quotas, matching states to quotas
// by window: a quota whose window is new starts empty, and states of
// windows no longer in lim are dropped.
func syncQuotas(st *State, lim *Limit, u int64) {
	if len(st.Quotas) == len(lim.Quotas) {
		same := true
		for i, q := range lim.Quotas {
			if st.Quotas[i].Window != ceilDiv(int64(q.Window), u) {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	qs := make([]QuotaState, len(lim.Quotas))
	for i, q := range lim.Quotas {
		qs[i].Window = ceilDiv(int64(q.Window), u)
		for _, old := range st.Quotas {
			if old.Window == qs[i].Window {
				qs[i].Slots = old.Slots
			}
		}
	}
	st.Quotas = qs
}

// prune drops slots below lo: they lie wholly outside every window that
// can still be asked about.
func (q *QuotaState) prune(lo int64) {
	n := 0
	for n < len(q.Slots) && q.Slots[n].Index < lo {
		n++
	}
	if n > 0 {
		q.Slots = q.Slots[:copy(q.Slots, q.Slots[n:])]
	}
}

// earliest returns the first time ≥ t at which cost more units fit within
// max, given slots of width w. The units used are summed in 128 bits: with
// bookings ahead and a limit lowered since, the slots can together hold
// more than an int64.
func (q *QuotaState) earliest(max, cost, t, w int64) int64 {
	lo := floorDiv(t-q.Window, w)
	var used uint128
	for _, s := range q.Slots {
		if s.Index >= lo {
			used.add(s.Count)
		}
	}
	for _, s := range q.Slots {
		if used.fits(cost, max) {
			break
		}
		if s.Index < lo {
			continue
		}
		used.sub(s.Count)
		t = (s.Index+1)*w + q.Window
	}
	return t
}

// uint128 is a sum of non-negative int64s.
type uint128 struct{ hi, lo uint64 }

func (u *uint128) add(n int64) {
	var carry uint64
	u.lo, carry = bits.Add64(u.lo, uint64(n), 0)
	u.hi += carry
}

func (u *uint128) sub(n int64) {
	var borrow uint64
	u.lo, borrow = bits.Sub64(u.lo, uint64(n), 0)
	u.hi -= borrow
}

// fits reports whether u + cost ≤ max, for cost, max ≥ 0.
func (u uint128) fits(cost, max int64) bool {
	return u.hi == 0 && u.lo <= uint64(max) && uint64(cost) <= uint64(max)-u.lo
}

func (q *QuotaState) add(index, cost int64) {
	i := len(q.Slots)
	for i > 0 && q.Slots[i-1].Index > index {
		i--
	}
	if i > 0 && q.Slots[i-1].Index == index {
		q.Slots[i-1].Count += cost
		return
	}
	q.Slots = slices.Insert(q.Slots, i, Slot{Index: index, Count: cost})
}

func (q *QuotaState) remove(index, cost int64) {
	for i := range q.Slots {
		if q.Slots[i].Index == index {
			q.Slots[i].Count -= min(cost, q.Slots[i].Count)
			if q.Slots[i].Count == 0 {
				q.Slots = slices.Delete(q.Slots, i, i+1)
			}
			return
		}
	}
}

// ceilDiv returns ⌈a/b⌉ for a ≥ 0, b > 0.
func ceilDiv(a, b int64) int64 {
	if a == 0 {
		return 0
	}
	return (a-1)/b + 1
}

// floorDiv returns ⌊a/b⌋ for b > 0 and any a.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// mulClamp returns min(a×b, limit) for a, b ≥ 0, without overflow.
func mulClamp(a, b, limit int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > uint64(limit) {
		return limit
	}
	return int64(lo)
}
