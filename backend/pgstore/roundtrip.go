package pgstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
)

// tick is the unit of the database's clock: clock_timestamp() in integer
// microseconds.
const tick = time.Microsecond

// spanTicks is MaxDuration in ticks, driver.Terms.Span: what a learned
// limit's charge is clamped to, a constant of decide_v3.
const spanTicks = int64(driver.MaxDuration / tick)

const (
	opAdmit   = 1
	opRefund  = 2
	opPause   = 3
	opRenew   = 4
	opRelease = 5
	opLearn   = 6
)

// The function's answers, reply.code.
const (
	codeRefused = 0
	codeAllowed = 1 // a renewal: renewed; a release: released
	codeAtCap   = 2 // refused at the inflight cap
)

// An op is one request of the function decide_v3: its key, op, its five
// numbers, its quotas' pairs, its lease and the lease's time to live, and
// its limit's interval and its floor's (see decide.sql, leases.sql and
// learn.sql).
type op struct {
	key           string
	op            int32
	a, b, c, d, e int64
	quotas        []driver.Quota
	refund        bool   // quotas carry windows only
	lease         []byte // nil: none
	ttl           int64  // ticks
	t, floor      int64  // ticks; floor 0: a fixed limit
}

// admitOp returns the request for req, a valid request: the integers of
// driver.Decide in ticks (driver.Request.Terms), computed here so that
// the function only adds and compares; for a capped limit, the cap and
// the lease to take.
func admitOp(req *driver.Request) op {
	tm := req.Terms(tick)
	o := op{key: req.Key, op: opAdmit, a: tm.Capacity, b: tm.Charge, c: req.Cost, d: tm.MaxWait, quotas: req.Limit.Quotas,
		t: tm.Interval, floor: tm.Floor}
	if req.Limit.Inflight > 0 {
		o.e, o.lease, o.ttl = req.Limit.Inflight, []byte(req.Lease), req.LeaseTTLTicks(tick)
	}
	return o
}

// refundOp returns the request to refund d, an admission of req that the
// database decided, and to release its lease if release is set and req
// took one.
func refundOp(req *driver.Request, d driver.Decision, release bool) op {
	b := d.Booking
	o := op{key: req.Key, op: opRefund, a: b.TAT, b: b.Prev, c: b.Gen, d: d.Start() / int64(tick), e: req.Cost,
		quotas: req.Limit.Quotas, refund: true}
	if release && req.Limit.Inflight > 0 {
		o.lease = []byte(req.Lease)
	}
	return o
}

// renewOp returns the request to renew l for ttl ticks, and releaseOp
// the request to release it.
func renewOp(l driver.LeaseRef, ttl int64) op {
	return op{key: l.Key, op: opRenew, lease: []byte(l.ID), ttl: ttl}
}

func releaseOp(l driver.LeaseRef) op {
	return op{key: l.Key, op: opRelease, lease: []byte(l.ID)}
}

// learnOp returns the request to learn fb for key under lim, a learned
// limit; lim and fb are valid. Its numbers are those of driver.Learn in
// ticks: the interval announced (0: none), the throttled admission's Gen
// (-1: not a throttle), the time to live, and the reset of the remaining
// units (0: none) and how many remain.
func learnOp(key string, lim *driver.Limit, fb *driver.Feedback) op {
	tm := (&driver.Request{Key: key, Limit: *lim, Cost: 1}).Terms(tick)
	ttl := fb.TTL
	if ttl == 0 {
		ttl = driver.DefaultLearnTTL
	}
	o := op{key: key, op: opLearn, a: driver.Ticks(fb.Interval, tick), b: -1, c: driver.Ticks(ttl, tick),
		t: tm.Interval, floor: tm.Floor}
	if fb.Throttled {
		o.b = fb.Gen
	}
	if fb.HasRemaining && fb.Reset > 0 {
		o.d, o.e = driver.Ticks(fb.Reset, tick), fb.Remaining
	}
	return o
}

// pauseOp returns the request to pause key for d, rounded up to a tick so
// that the pause is never shorter than asked.
func pauseOp(key string, d time.Duration) op {
	return op{key: key, op: opPause, a: driver.Ticks(min(max(d, 0), driver.MaxDuration), tick)}
}

// reply is the function's answer to a request.
type reply struct {
	code      int32 // codeRefused, codeAllowed or codeAtCap
	wait, now int64 // ticks
	tat, prev int64 // ticks; the booking
	gen       int64
	fresh     int64 // ticks; when the state becomes fresh, 0 if it is
	interval  int64 // ticks; the interval applied, or learned (opLearn)
}

func (r reply) decision() driver.Decision {
	d := driver.Decision{
		Allowed: r.code == codeAllowed,
		Wait:    time.Duration(r.wait) * tick,
		Now:     r.now * int64(tick),
		AtCap:   r.code == codeAtCap,
	}
	if !d.AtCap {
		d.Interval = time.Duration(r.interval) * tick
	}
	if d.Allowed {
		d.Booking = driver.Booking{TAT: r.tat, Prev: r.prev, Gen: r.gen}
	}
	return d
}

// run decides ops in one statement, in a round trip bounded by the
// Store's timeout, on the database's clock unless clock is given (tests).
func (s *Store) run(ctx context.Context, ops []op) ([]reply, error) {
	return s.runAt(ctx, ops, nil)
}

func (s *Store) runAt(ctx context.Context, ops []op, clock *int64) ([]reply, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var (
		n                    = len(ops)
		kidx, kinds, qn      = make([]int32, n), make([]int32, n), make([]int32, n)
		fa, fb, fc, fd, fe   = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		qw, qm               []int64
		lids, lttls          = make([][]byte, n), make([]int64, n)
		lprev                = make([]int32, n)
		last                 map[leaseKey]int32 // the latest request on each lease
		ft, ffl              []int64            // nil (NULL) unless a request is of a learned limit
		codes                []int32
		wait, now, tat, prev []int64
		gen, fresh, ivs      []int64
	)
	ukeys := sortedKeys(ops, kidx)
	for i, o := range ops {
		kinds[i], fa[i], fb[i], fc[i], fd[i], fe[i] = o.op, o.a, o.b, o.c, o.d, o.e
		lids[i], lttls[i] = o.lease, o.ttl
		if o.lease != nil {
			if last == nil {
				last = make(map[leaseKey]int32)
			}
			lk := leaseKey{o.key, string(o.lease)}
			lprev[i], last[lk] = last[lk], int32(i+1)
		}
		if o.floor > 0 && ft == nil {
			ft, ffl = make([]int64, n), make([]int64, n)
			for j := range ops {
				ft[j], ffl[j] = ops[j].t, ops[j].floor
			}
		}
		qn[i] = int32(len(o.quotas))
		for _, q := range o.quotas {
			qw = append(qw, driver.Ticks(q.Window, tick))
			if o.refund {
				qm = append(qm, 0)
			} else {
				qm = append(qm, q.Max)
			}
		}
	}
	if qw == nil {
		qw, qm = []int64{}, []int64{}
	}
	sql, into := s.sql.decide, []any{&codes, &wait, &now, &tat, &prev, &gen, &fresh}
	if ft != nil {
		sql, into = s.sql.decideLearned, append(into, &ivs)
	}
	for retried := false; ; retried = true {
		if err := s.ensureSchema(ctx); err != nil {
			return nil, err
		}
		err := s.pool.QueryRow(ctx, sql, s.mode,
			ukeys, kidx, kinds, fa, fb, fc, fd, fe, qn, qw, qm, lids, lttls, lprev, ft, ffl, clock, s.durable).
			Scan(into...)
		if err == nil {
			break
		}
		if retried || !s.schemaGone(err) {
			return nil, err
		}
	}
	if len(codes) != n || len(wait) != n || len(now) != n || len(tat) != n || len(prev) != n || len(gen) != n || len(fresh) != n ||
		ft != nil && len(ivs) != n {
		return nil, fmt.Errorf("pgstore: the function replied %d decisions for %d requests", len(codes), n)
	}
	out := make([]reply, n)
	for i := range out {
		// A fixed limit's interval is its own: the function says only
		// what a learned limit applies.
		iv := ops[i].t
		if ops[i].floor > 0 {
			iv = ivs[i]
		}
		out[i] = reply{code: codes[i], wait: wait[i], now: now[i], tat: tat[i], prev: prev[i], gen: gen[i], fresh: fresh[i], interval: iv}
	}
	return out, nil
}

// A leaseKey names a lease in a batch: its key and ID.
type leaseKey struct{ key, id string }

// sortedKeys returns the distinct keys of ops, in byte order, and sets
// kidx[i] to the 1-based index of ops[i]'s key among them.
func sortedKeys(ops []op, kidx []int32) [][]byte {
	order := make([]int, len(ops))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(ops[a].key, ops[b].key) })
	var ukeys [][]byte
	for j, i := range order {
		if j == 0 || ops[i].key != ops[order[j-1]].key {
			ukeys = append(ukeys, []byte(ops[i].key))
		}
		kidx[i] = int32(len(ukeys))
	}
	return ukeys
}

// giveBack refunds admissions the database made for callers that gave
// up, given in the order it made them, in one round trip
// (driver.UnbookAll), so that consecutive ones of a key all come back,
// and releases the leases they took, every one: UnbookAll leaves out
// admissions whose rate cannot come back. It asks the database even
// while the Store counts it as down: the admissions were made there.
func (s *Store) giveBack(ctx context.Context, admitted []driver.Admission) {
	var ops []op
	for _, a := range driver.UnbookAll(admitted) {
		ops = append(ops, refundOp(&a.Request, a.Decision, false))
	}
	for _, a := range admitted {
		if a.Limit.Inflight > 0 {
			ops = append(ops, releaseOp(driver.LeaseRef{Key: a.Key, ID: a.Lease}))
		}
	}
	s.run(ctx, ops)
}

// An admission is a call of Admit, Refund, Pause, Renew or Release: its
// request to the function, or for Renew and Release its requests, one a
// lease; and for an admission the request it decides.
type admission struct {
	op   op
	many []op // Renew and Release: instead of op
	req  driver.Request
}

// An answer is the function's reply to a call: to its one request, or
// to each of many.
type answer struct {
	reply
	many []reply
}

// sendAdmits sends the calls queued as one batch.
func (s *Store) sendAdmits(ctx context.Context, r *coalesce.Round[admission, answer]) {
	r.Take()
	if len(r.Calls) == 0 {
		return
	}
	ops := make([]op, 0, len(r.Calls))
	for _, c := range r.Calls {
		if c.Req.many != nil {
			ops = append(ops, c.Req.many...)
		} else {
			ops = append(ops, c.Req.op)
		}
	}
	replies, err := s.run(ctx, ops)
	for _, c := range r.Calls {
		switch {
		case err != nil:
			c.Err = err
		case c.Req.many != nil:
			c.Ans.many, replies = replies[:len(c.Req.many):len(c.Req.many)], replies[len(c.Req.many):]
		default:
			c.Ans.reply, replies = replies[0], replies[1:]
		}
	}
}

// giveBackAdmits gives back what the database admitted for Admit calls
// whose callers gave up while their round trip was in flight. A refund,
// pause, renewal or release whose caller left applied all the same.
func (s *Store) giveBackAdmits(calls []*coalesce.Call[admission, answer]) {
	var refunds []driver.Admission
	for _, c := range calls {
		if c.Err == nil && c.Req.many == nil && c.Ans.code == codeAllowed && c.Req.op.op == opAdmit {
			refunds = append(refunds, driver.Admission{Request: c.Req.req, Decision: c.Ans.decision()})
		}
	}
	if len(refunds) > 0 {
		s.giveBack(context.Background(), refunds)
	}
}
