// Package driver is what bucket backends are built on, as
// database/sql/driver is to database/sql: the Backend contract that
// bucket.Limiter and the dispatcher call, the requests and decisions that
// cross it, and the mathematics every backend decides with (Decide,
// Refund, Pause and FreshAt on a State, Unbook on bookings), so that the
// semantics are identical everywhere by construction. A backend that
// decides elsewhere, in a Redis script, takes its numbers from Terms and
// Ticks. The mathematics does no I/O and takes no locks; a State is
// guarded by the backend that stores it. Users of the module need only
// its Backend, to hold a store whose kind is chosen at run time;
// backend/backendtest checks an implementation against the rest.
package driver

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A Backend stores bucket state and decides admissions against it. Each
// call is atomic: a request's rate and quotas are checked and charged
// together, or not at all. Implementations are safe for concurrent use,
// and implementations sharing storage (processes on one SQLite file, hosts
// on one Redis) behave as one backend. No call waits for a slot: Admit
// books one and returns, and a call blocks only for the backend's own work
// (a lock in memory, a round trip to SQLite or Redis). A backend that can
// be closed returns ErrClosed from every call after Close.
type Backend interface {
	// Admit decides req at the backend's current time. A refused request
	// charges nothing. Invalid requests return the errors of
	// Request.Validate.
	Admit(ctx context.Context, req Request) (Decision, error)
	// Refund gives back the admission d of req that will not be used, if
	// it is still the key's latest admission and nothing was refunded
	// since (no later admission depends on it). Otherwise it does
	// nothing, as for an admission refunded already or forgotten, and
	// for a refusal. req must be the request that was admitted: its cost
	// and quotas are given back as they are. A refund that applies sets
	// the state's TAT back to d.Booking.Prev and adds one to its
	// generation, as the function Refund does: Booking.Join and
	// Booking.Unwound rely on it. A LeaseBackend also releases req.Lease
	// whether or not the rate comes back, even for a refusal: refund only
	// what was admitted.
	Refund(ctx context.Context, req Request, d Decision) error
	// Pause admits nothing for key until d from the backend's current
	// time; the empty key returns ErrEmptyKey. A shorter pause never
	// shortens a longer one already in force. A d ≤ 0 pauses nothing;
	// a d beyond MaxDuration pauses for MaxDuration.
	Pause(ctx context.Context, key string, d time.Duration) error
}

// A BatchBackend decides many requests in one round trip. The dispatcher
// uses it when the backend offers it; the outcome is the same as calling
// Admit for each admission in order.
type BatchBackend interface {
	Backend
	// AdmitBatch fills in each admission's Decision or Err.
	AdmitBatch(ctx context.Context, batch []Admission)
}

// AdmitBatch decides batch on b: in one call if b is a BatchBackend, else
// by one Admit per admission, in order.
func AdmitBatch(ctx context.Context, b Backend, batch []Admission) {
	if bb, ok := b.(BatchBackend); ok {
		bb.AdmitBatch(ctx, batch)
		return
	}
	for i := range batch {
		a := &batch[i]
		a.Decision, a.Err = b.Admit(ctx, a.Request)
	}
}

// An Admission is one element of a batch: a request and its outcome.
type Admission struct {
	Request
	Decision Decision
	Err      error
}

// A Request asks for Cost units of Key's bucket under Limit, starting no
// later than MaxWait from the backend's current time.
type Request struct {
	Key     string
	Limit   Limit
	Cost    int64
	MaxWait time.Duration // 0 or less: now or never
	// Lease names the lease an admission takes when Limit.Inflight is
	// positive (required then), held LeaseTTL from the decision
	// (0: DefaultLeaseTTL) unless renewed or released.
	Lease    LeaseID
	LeaseTTL time.Duration
}

// Validate reports why no backend could decide r: ErrEmptyKey,
// ErrInvalidCost, a *LimitError, a *CostError, or for a capped limit
// ErrNoLease or ErrInvalidLeaseTTL.
func (r *Request) Validate() error {
	if r.plainValid() {
		return nil // the common case, without check's error-building code
	}
	return r.check()
}

// check is Validate in full.
func (r *Request) check() error {
	if r.Key == "" {
		return ErrEmptyKey
	}
	if r.Cost < 1 {
		return fmt.Errorf("%w, got %d", ErrInvalidCost, r.Cost)
	}
	if err := r.Limit.Validate(); err != nil {
		return err
	}
	if r.Cost > r.Limit.Burst {
		return &CostError{Cost: r.Cost, Max: r.Limit.Burst, Bound: "burst"}
	}
	for _, q := range r.Limit.Quotas {
		if r.Cost > q.Max {
			return &CostError{Cost: r.Cost, Max: q.Max, Bound: "quota " + rateString(q.Max, q.Window)}
		}
	}
	return r.checkLease()
}

// plainValid reports, cheaply, whether r is a valid request under a limit
// without quotas. When it reports true check would find nothing wrong;
// when it reports false, check decides.
func (r *Request) plainValid() bool {
	l := &r.Limit
	return r.Key != "" && r.Cost >= 1 && l.Burst >= r.Cost && len(l.Quotas) == 0 && l.Inflight == 0 && l.FloorRate == 0 &&
		l.Rate >= 1 && l.Period > 0 && l.Period <= MaxDuration && burstFits(l.Burst, l.Period, l.Rate)
}

// A Decision is a backend's answer to a Request.
type Decision struct {
	// Allowed reports whether the request was admitted.
	Allowed bool
	// Wait is, if Allowed, how long after the decision the caller may
	// start (0 ≤ Wait ≤ MaxWait); otherwise how long until the request
	// would be admissible if nothing else were admitted first.
	Wait time.Duration
	// Now is the backend's clock at the decision, in nanoseconds of the
	// backend's own time base (monotonic since start for memory, Unix time
	// for SQLite and Redis). Now+Wait is the admitted start.
	Now int64
	// Booking identifies the admission for Refund; zero when refused.
	Booking Booking
	// Interval is the emission interval the decision applied, in
	// nanoseconds: the limit's own, or the slower one its key learned
	// (Limit.FloorRate); 0 in a refusal at the cap.
	Interval time.Duration
	// AtCap reports a refusal because the key's limit caps its leases
	// (Limit.Inflight) and as many are held; Wait is then the time until
	// the first of them expires, unless its holder releases it sooner.
	AtCap bool
}

// Start returns the admitted start time in the backend's time base.
func (d Decision) Start() int64 { return d.Now + int64(d.Wait) }

// A Booking records the change an admission made to its bucket, in the
// backend's clock ticks, so that Refund can undo it.
type Booking struct {
	TAT  int64 // theoretical arrival time after the admission
	Prev int64 // theoretical arrival time before it
	Gen  int64 // the state's generation after it
}

// Join returns the booking of two admissions of one key, b made right
// after earlier (nothing admitted on the key between them): refunding it
// gives both back at once, if b is still the key's latest admission. It
// reports false, and returns b, if something came between them. Only
// rate is given back for earlier: the quota units it used stay used until
// their window passes, which only under-admits (see Unwound).
func (b Booking) Join(earlier Booking) (Booking, bool) {
	if b.Prev != earlier.TAT {
		return b, false
	}
	return Booking{TAT: b.TAT, Prev: earlier.Prev, Gen: b.Gen}, true
}

// Unwound returns earlier's booking as it stands once b, the admission of
// the key made right after it, has been refunded (a refund adds one to the
// state's generation): refunding b, then earlier with this booking, gives
// both back, quota units included, unless something else touches the key
// in between, when the second refund does nothing. It reports false if
// something was admitted between them.
func (b Booking) Unwound(earlier Booking) (Booking, bool) {
	if b.Prev != earlier.TAT {
		return earlier, false
	}
	return Booking{TAT: earlier.TAT, Prev: earlier.Prev, Gen: b.Gen + 1}, true
}

// Unbook returns the refunds, to be made in order, that give back
// admissions of one key, given latest first: the latest together with
// those made right before it, with nothing admitted between. Without
// quotas they are joined into one refund (Join); under quotas each is
// refunded in turn (Unwound), so that their quota units come back too.
// The admissions before anything that came between stay charged: a later
// admission depends on them, and keeping them only under-admits.
func Unbook(latestFirst []Admission) []Admission {
	if len(latestFirst) == 0 {
		return nil
	}
	give := []Admission{latestFirst[0]}
	for _, a := range latestFirst[1:] {
		last := &give[len(give)-1].Decision.Booking
		var ok bool
		if len(a.Limit.Quotas) == 0 {
			*last, ok = last.Join(a.Decision.Booking)
		} else if a.Decision.Booking, ok = last.Unwound(a.Decision.Booking); ok {
			give = append(give, a)
		}
		if !ok {
			break
		}
	}
	return give
}

// UnbookAll returns the refunds, to be made in order, that give back
// admissions of any keys, given in the order they were made: each key's
// as Unbook gives them back (latest first, joined), keys in the order of
// their names. A backend gives back this way what it admitted for callers
// that went away before their answer.
func UnbookAll(inOrder []Admission) []Admission {
	byKey := slices.Clone(inOrder)
	slices.SortStableFunc(byKey, func(a, b Admission) int { return strings.Compare(a.Key, b.Key) })
	var give []Admission
	for len(byKey) > 0 {
		n := 1
		for n < len(byKey) && byKey[n].Key == byKey[0].Key {
			n++
		}
		latestFirst := byKey[:n]
		slices.Reverse(latestFirst)
		give = append(give, Unbook(latestFirst)...)
		byKey = byKey[n:]
	}
	return give
}
