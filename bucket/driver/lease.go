package driver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// A limit with an Inflight cap admits a key's requests only while fewer
// than Inflight of them hold a lease: an admission of such a request takes
// the lease its Request names, atomically with the rate and quotas, and
// its holder gives it back (Release) when the work ends, or renews it
// (Renew) while the work runs. A lease not renewed expires LeaseTTL after
// it was taken or last renewed, so that the leases of a process that died
// come back by themselves.

// DefaultLeaseTTL is a lease's time to live when its request gives none.
// Holders renew a lease every third of it.
const DefaultLeaseTTL = 10 * time.Second

// MinLeaseTTL is the shortest time to live a request may give: below it
// a holder could not renew in time over a network.
const MinLeaseTTL = 10 * time.Millisecond

// A LeaseID names one lease of a key. Its holder chooses it, unique among
// the key's leases for as long as it may be held: NewLeaseID and LeaseIDs
// make such names. Taking a lease one holds already renews it.
type LeaseID string

// A LeaseRef names a held lease: its key and its ID.
type LeaseRef struct {
	Key string
	ID  LeaseID
}

// A LeaseBackend keeps the leases of limits with an Inflight cap. Its
// Admit of a request whose Limit.Inflight is positive takes req.Lease
// with the admission, in the same atomic step, or refuses with AtCap set
// and charges nothing; its Refund of such an admission releases the lease
// as well, whether or not the rate is given back. A Backend that is not a
// LeaseBackend cannot decide such requests.
type LeaseBackend interface {
	Backend
	// Renew extends each lease still held to ttl from the backend's
	// current time, and returns those it does not hold: expired,
	// released or never taken. Their holders must assume that another
	// holds their place now. A ttl below MinLeaseTTL is an error.
	Renew(ctx context.Context, leases []LeaseRef, ttl time.Duration) (lost []LeaseRef, err error)
	// Release gives leases back at once. Releasing a lease that is not
	// held (released already, or expired) does nothing, and never frees
	// another holder's.
	Release(ctx context.Context, leases []LeaseRef) error
}

// Leases are one key's held leases, in a backend's clock ticks. The zero
// value holds none. Backends store them beside the key's State; the
// methods change them. Not safe for concurrent use.
type Leases struct {
	Held []HeldLease // in the order they were taken; expired ones may linger until Prune
}

// A HeldLease is one lease and the tick at which it expires.
type HeldLease struct {
	ID      LeaseID
	Expires int64
}

// Prune forgets the leases expired at now.
func (ls *Leases) Prune(now int64) {
	ls.Held = slices.DeleteFunc(ls.Held, func(h HeldLease) bool { return h.Expires <= now })
}

// Count returns how many leases are held at now.
func (ls *Leases) Count(now int64) int64 {
	var n int64
	for _, h := range ls.Held {
		if h.Expires > now {
			n++
		}
	}
	return n
}

// Holds reports whether id is held at now.
func (ls *Leases) Holds(id LeaseID, now int64) bool {
	i := ls.index(id)
	return i >= 0 && ls.Held[i].Expires > now
}

// Take records id as held until expires, renewing it if it is held.
// It does not check the cap: DecideLeased does.
func (ls *Leases) Take(id LeaseID, expires int64) {
	if i := ls.index(id); i >= 0 {
		ls.Held[i].Expires = max(ls.Held[i].Expires, expires)
		return
	}
	ls.Held = append(ls.Held, HeldLease{ID: id, Expires: expires})
}

// Renew extends id to expires if it is held at now, and reports whether
// it was. A renewal never shortens a lease.
func (ls *Leases) Renew(id LeaseID, now, expires int64) bool {
	i := ls.index(id)
	if i < 0 || ls.Held[i].Expires <= now {
		return false
	}
	ls.Held[i].Expires = max(ls.Held[i].Expires, expires)
	return true
}

// Release forgets id, and reports whether it was recorded (held, or
// expired and not yet pruned).
func (ls *Leases) Release(id LeaseID) bool {
	i := ls.index(id)
	if i < 0 {
		return false
	}
	ls.Held = slices.Delete(ls.Held, i, i+1)
	return true
}

// NextExpiry returns the earliest expiry after now of a held lease, or
// now if none is held: when a place comes free if no holder releases
// one first.
func (ls *Leases) NextExpiry(now int64) int64 {
	next := int64(0)
	for _, h := range ls.Held {
		if h.Expires > now && (next == 0 || h.Expires < next) {
			next = h.Expires
		}
	}
	if next == 0 {
		return now
	}
	return next
}

// FreshAt returns the tick from which no lease is held: with FreshAt of
// the key's State, when a backend may forget the key.
func (ls *Leases) FreshAt() int64 {
	var fresh int64
	for _, h := range ls.Held {
		fresh = max(fresh, h.Expires)
	}
	return fresh
}

func (ls *Leases) index(id LeaseID) int {
	return slices.IndexFunc(ls.Held, func(h HeldLease) bool { return h.ID == id })
}

// DecideLeased decides req against st and ls at time now, both in ticks of
// unit: as Decide, and when req.Limit.Inflight is positive the admission
// also takes the lease req.Lease until now + its time to live. If
// Inflight leases other than req.Lease are held, it refuses with AtCap
// set, charging nothing, and Wait is the time until the first of them
// expires (an upper bound: a holder may release one sooner). A lease
// expired at now no longer counts, whoever held it.
func DecideLeased(st *State, ls *Leases, req *Request, unit time.Duration, now int64) (Decision, error) {
	if req.Limit.Inflight <= 0 {
		return Decide(st, req, unit, now)
	}
	if err := req.Validate(); err != nil {
		return Decision{}, err
	}
	ls.Prune(now)
	if !ls.Holds(req.Lease, now) && ls.Count(now) >= req.Limit.Inflight {
		u := int64(unit)
		return Decision{AtCap: true, Wait: time.Duration((ls.NextExpiry(now) - now) * u), Now: now * u}, nil
	}
	// The rate as Decide decides it, on a copy without the cap: Decide
	// keeps the uncapped path, every admission's, free of lease checks.
	rate := *req
	rate.Limit.Inflight = 0
	d, err := Decide(st, &rate, unit, now)
	if err == nil && d.Allowed {
		ls.Take(req.Lease, now+Ticks(req.leaseTTL(), unit))
	}
	return d, err
}

// ReleaseLeased gives back a refunded admission's lease: the refund of the
// rate itself is Refund's. A backend's Refund of a leased request calls
// both.
func ReleaseLeased(ls *Leases, req *Request) {
	if req.Limit.Inflight > 0 {
		ls.Release(req.Lease)
	}
}

// leaseTTL returns the request's lease time to live, DefaultLeaseTTL if
// it gives none.
func (r *Request) leaseTTL() time.Duration {
	if r.LeaseTTL == 0 {
		return DefaultLeaseTTL
	}
	return r.LeaseTTL
}

// LeaseTTLTicks returns the request's lease time to live in ticks of
// unit, rounded up: what a backend that decides elsewhere (a Redis
// script) adds to now for the lease's expiry.
func (r *Request) LeaseTTLTicks(unit time.Duration) int64 { return Ticks(r.leaseTTL(), unit) }

// checkLease is the part of Request.Validate about the lease.
func (r *Request) checkLease() error {
	switch {
	case r.Limit.Inflight <= 0:
		return nil
	case r.Lease == "":
		return ErrNoLease
	case r.LeaseTTL != 0 && (r.LeaseTTL < MinLeaseTTL || r.LeaseTTL > MaxDuration):
		return fmt.Errorf("%w: LeaseTTL %v, want 0 (DefaultLeaseTTL) or from %v to MaxDuration", ErrInvalidLeaseTTL, r.LeaseTTL, MinLeaseTTL)
	}
	return nil
}

// CheckRenew reports why Renew could not renew with ttl: nil, or an error
// matching ErrInvalidLeaseTTL.
func CheckRenew(ttl time.Duration) error {
	if ttl < MinLeaseTTL || ttl > MaxDuration {
		return fmt.Errorf("%w: %v, want from %v to MaxDuration", ErrInvalidLeaseTTL, ttl, MinLeaseTTL)
	}
	return nil
}

// NewLeaseID returns a lease ID unique with overwhelming probability: 16
// random bytes, as 22 characters of URL-safe base64.
func NewLeaseID() LeaseID {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand's contract since Go 1.24)
	return LeaseID(base64.RawURLEncoding.EncodeToString(b[:]))
}

// LeaseIDs makes lease IDs for one holder cheaply: a random prefix of its
// own and a counter. The zero value is not usable; call NewLeaseIDs. Safe
// for concurrent use.
type LeaseIDs struct {
	prefix string
	n      atomic.Uint64
}

// NewLeaseIDs returns a generator with a fresh random prefix.
func NewLeaseIDs() *LeaseIDs {
	return &LeaseIDs{prefix: string(NewLeaseID()) + "."}
}

// Next returns an ID no other call of Next, on any generator, returns.
func (g *LeaseIDs) Next() LeaseID {
	return LeaseID(g.prefix + strconv.FormatUint(g.n.Add(1), 36))
}
