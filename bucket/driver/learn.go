package driver

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// A learned limit (Limit.FloorRate and FloorPeriod set) follows what the
// service says of its own limit. Whatever it says becomes one number, an
// emission interval the key may not go faster than for a while, kept with
// the key's State (State.Learned) and applied by every decision: the
// slower of the limit's own interval and the learned one, never slower
// than the floor. So what one process learns holds for every process
// sharing the backend, atomically with admissions.
//
//   - An announced policy, Q units per window W, becomes the interval W/Q
//     (Feedback.Interval), until the record expires.
//   - Remaining units r before a reset t pace the key at t/r until t; none
//     remaining pauses it until t.
//   - A throttle that said nothing else (a 429 without headers) lowers the
//     key's current rate to Beta times itself, and the rate climbs back
//     along a cubic, as TCP CUBIC and the AWS SDK's adaptive retry mode do:
//     fast while far below the rate it dropped from, flat near it, then
//     probing beyond it, up to the ceiling. It takes K = ∛(W(1−Beta)/C)
//     seconds to return to the rate W it dropped from (C = 0.4 units per
//     second cubed, the SDK's), so a key of 10/s climbs back in 2 s and one
//     of 1,000/s in 9 s.
//
// A throttle of an admission decided before the last drop (Feedback.Gen)
// is the same overload and drops nothing again: processes that see one
// overload together drop once. What is learned expires a TTL after it was
// last said (Feedback.TTL); a throttle within it confirms it.

// Beta is the factor a throttle multiplies the key's rate by.
const Beta = 0.7

// DefaultLearnTTL is how long what a key learned holds, unless said again,
// when a Feedback gives no TTL.
const DefaultLearnTTL = time.Minute

// cubicDrop is 1 − Beta, written as the literal every backend's port of
// Learned.rate multiplies by, so that their doubles are the same.
const cubicDrop = 0.3

// A Feedback is what a service's answer said about a key's limit, as Learn
// takes it. The zero Feedback says nothing.
type Feedback struct {
	// Throttled reports a refusal for rate (a 429) that announced no
	// limit: the key's rate drops by Beta.
	Throttled bool
	// Gen is the throttled admission's Booking.Gen, or 0 if unknown: a
	// throttle of an admission decided before the last drop drops nothing
	// again.
	Gen int64
	// Interval is the emission interval the service announced, its
	// policy's window over its quota, or 0 if it announced none.
	Interval time.Duration
	// Remaining units are left before Reset, if HasRemaining.
	Remaining    int64
	Reset        time.Duration
	HasRemaining bool
	// TTL is how long what is learned holds unless said again; 0:
	// DefaultLearnTTL.
	TTL time.Duration
}

// Validate reports why no backend could learn fb: an error matching
// ErrInvalidFeedback, or nil.
func (fb *Feedback) Validate() error {
	bad := func(field string, v any) error {
		return fmt.Errorf("%w: %s %v out of range", ErrInvalidFeedback, field, v)
	}
	switch {
	case fb.Gen < 0:
		return bad("Gen", fb.Gen)
	case fb.Interval < 0 || fb.Interval > MaxDuration:
		return bad("Interval", fb.Interval)
	case fb.Remaining < 0:
		return bad("Remaining", fb.Remaining)
	case fb.Reset < 0 || fb.Reset > MaxDuration:
		return bad("Reset", fb.Reset)
	case fb.TTL < 0 || fb.TTL > MaxDuration:
		return bad("TTL", fb.TTL)
	}
	return nil
}

// ttl returns fb's TTL, DefaultLearnTTL if it gives none.
func (fb *Feedback) ttl() time.Duration {
	if fb.TTL == 0 {
		return DefaultLearnTTL
	}
	return fb.TTL
}

// A LearnBackend keeps learned limits: its decisions of a learned limit
// apply the key's State.Learned, and Learn changes it.
type LearnBackend interface {
	Backend
	// Learn applies fb to key's bucket under lim at the backend's current
	// time, atomically with admissions, as the function Learn does, and
	// returns the emission interval the key's admissions use from now:
	// lim's own, or slower. It does nothing to a fixed limit, and returns
	// its interval. Invalid arguments return ErrEmptyKey, a *LimitError
	// or ErrInvalidFeedback.
	Learn(ctx context.Context, key string, lim Limit, fb Feedback) (time.Duration, error)
}

// Learned is what a key's bucket learned of the service's limit, in ticks
// of a backend's clock. A State holds none (nil) until a learned limit's
// Feedback says something.
type Learned struct {
	// Interval is the interval announced, or the one the last drop fell
	// from; 0: none.
	Interval int64
	// Recover is K, the time the cubic takes from the drop at Drop back to
	// Interval; 0: Interval was announced and holds flat.
	Recover int64
	Drop    int64
	// DropGen is the State's Gen at the drop: admissions up to it were
	// decided before it.
	DropGen int64
	// Until is when Interval expires.
	Until int64
	// Pace is the interval remaining units set, until PaceUntil; 0: none.
	Pace      int64
	PaceUntil int64
}

// Effective returns the emission interval a decision at now applies to a
// learned limit whose own interval is t and whose floor's is floor, in
// ticks: the slowest of t and what l holds at now, at most floor.
func (l *Learned) Effective(t, floor, now int64) int64 {
	v := t
	if now < l.Until {
		v = max(v, l.rate(now))
	}
	if now < l.PaceUntil {
		v = max(v, l.Pace)
	}
	return min(v, floor)
}

// rate returns the interval l.Interval, or the cubic's at now. Every
// product is rounded to a double before the next step, as a Redis script
// and a PL/pgSQL function compute it, so that every backend finds the same
// ticks.
func (l *Learned) rate(now int64) int64 {
	if l.Recover == 0 {
		return l.Interval
	}
	d := float64(l.Recover-max(now-l.Drop, 0)) / float64(l.Recover)
	p := float64(d * d)
	p = float64(p * d)
	p = float64(p * cubicDrop)
	return int64(math.Ceil(float64(l.Interval) / (1 - p)))
}

// Learn applies fb to st for a key of the learned limit lim at now, in
// ticks of unit (see the package's learned limits): an announced interval
// replaces what was learned; a throttle drops the current rate by Beta,
// unless it is of an admission decided before the last drop, when it
// only confirms it; remaining units pace the key, or pause it when none
// are left. It does nothing for a fixed limit. It returns the emission
// interval the key's decisions apply from now, in nanoseconds, as
// LearnBackend.Learn does. lim and fb must be valid (CheckLearn).
func Learn(st *State, lim *Limit, fb *Feedback, unit time.Duration, now int64) time.Duration {
	u := int64(unit)
	t, floor := lim.ticks(u)
	if !lim.Learned() {
		return time.Duration(t * u)
	}
	l := st.Learned
	if l == nil {
		l = new(Learned)
		st.Learned = l
	}
	if now >= l.Until {
		l.Interval, l.Recover, l.Drop, l.DropGen, l.Until = 0, 0, 0, 0, 0
	}
	if now >= l.PaceUntil {
		l.Pace, l.PaceUntil = 0, 0
	}
	until := now + Ticks(fb.ttl(), unit)
	switch {
	case fb.Interval > 0:
		l.Interval, l.Recover, l.Drop, l.DropGen, l.Until = Ticks(fb.Interval, unit), 0, 0, 0, until
	case fb.Throttled && l.Recover != 0 && fb.Gen != 0 && fb.Gen <= l.DropGen:
		l.Until = until // the overload of the last drop: confirmed
	case fb.Throttled:
		cur := l.Effective(t, floor, now)
		l.Interval, l.Recover, l.Drop, l.DropGen, l.Until = cur, RecoverTicks(cur, unit), now, st.Gen, until
	}
	if fb.HasRemaining && fb.Reset > 0 {
		reset := Ticks(fb.Reset, unit)
		if fb.Remaining == 0 {
			Pause(st, now+reset)
		} else {
			l.Pace, l.PaceUntil = ceilDiv(reset, fb.Remaining), now+reset
		}
	}
	if l.Until == 0 && l.PaceUntil == 0 {
		st.Learned = nil
		return time.Duration(t * u)
	}
	return time.Duration(l.Effective(t, floor, now) * u)
}

// CheckLearn reports why no backend could learn fb for key under lim:
// ErrEmptyKey, a *LimitError, an error matching ErrInvalidFeedback, or
// nil.
func CheckLearn(key string, lim *Limit, fb *Feedback) error {
	if key == "" {
		return ErrEmptyKey
	}
	if err := lim.Validate(); err != nil {
		return err
	}
	return fb.Validate()
}

// ticks returns a limit's interval and its floor's (the interval for a
// fixed limit), in ticks of u, rounded up as Terms rounds.
func (l *Limit) ticks(u int64) (t, floor int64) {
	t = ceilDiv(ceilDiv(int64(l.Period), u), l.Rate)
	if !l.Learned() {
		return t, t
	}
	return t, ceilDiv(ceilDiv(int64(l.FloorPeriod), u), l.FloorRate)
}

// RecoverTicks returns K for a drop from the interval cur (ticks of unit):
// ∛(W(1−Beta)/C) seconds for a rate of W units per second, C = 0.4, to
// the millisecond below, at least one. It is found as the integer cube
// root of ⌊7.5×10¹⁷ / (cur in ns)⌋ milliseconds cubed, by bisection, so
// that a script in doubles (exact below 2⁵³: in µs the numbers stay below
// 7.5×10¹⁴) finds the same K.
func RecoverTicks(cur int64, unit time.Duration) int64 {
	hi, lo := bits.Mul64(uint64(cur), uint64(unit))
	var n int64
	if hi == 0 && lo <= 750_000_000_000_000_000 {
		n = 750_000_000_000_000_000 / int64(max(lo, 1))
	}
	var k int64 // the largest k with k³ ≤ n, n < 2⁶⁰
	for step := int64(1) << 19; step > 0; step >>= 1 {
		if c := k + step; c*c*c <= n {
			k = c
		}
	}
	return max(k, 1) * int64(time.Millisecond) / int64(unit)
}

// Learned reports whether l is a learned limit: one with a floor.
func (l *Limit) Learned() bool { return l.FloorRate != 0 }

// validFloor checks a learned limit's floor: set whole, valid, and no
// faster than the rate.
func (l *Limit) validFloor() error {
	if l.FloorRate == 0 && l.FloorPeriod == 0 {
		return nil
	}
	switch {
	case l.FloorRate < 1:
		return &LimitError{Field: "FloorRate", Reason: fmt.Sprintf("must be at least 1, got %d", l.FloorRate)}
	case l.FloorPeriod <= 0:
		return &LimitError{Field: "FloorPeriod", Reason: fmt.Sprintf("must be positive, got %v", l.FloorPeriod)}
	case l.FloorPeriod > MaxDuration:
		return &LimitError{Field: "FloorPeriod", Reason: fmt.Sprintf("%v exceeds MaxDuration", l.FloorPeriod)}
	}
	// FloorRate/FloorPeriod ≤ Rate/Period, exactly.
	fhi, flo := bits.Mul64(uint64(l.FloorRate), uint64(l.Period))
	rhi, rlo := bits.Mul64(uint64(l.Rate), uint64(l.FloorPeriod))
	if fhi > rhi || fhi == rhi && flo > rlo {
		return &LimitError{Field: "FloorRate", Reason: fmt.Sprintf("floor %s is faster than the rate %s",
			rateString(l.FloorRate, l.FloorPeriod), rateString(l.Rate, l.Period))}
	}
	return nil
}
