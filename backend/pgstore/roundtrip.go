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

const (
	opAdmit  = 1
	opRefund = 2
	opPause  = 3
)

// An op is one request of the function decide_v1: its key, op, its five
// numbers and its quotas' pairs (see decide.sql).
type op struct {
	key           string
	op            int32
	a, b, c, d, e int64
	quotas        []driver.Quota
	refund        bool // quotas carry windows only
}

// admitOp returns the request for req, a valid request: the integers of
// driver.Decide in ticks (driver.Request.Terms), computed here so that
// the function only adds and compares.
func admitOp(req *driver.Request) op {
	tm := req.Terms(tick)
	return op{key: req.Key, op: opAdmit, a: tm.Capacity, b: tm.Charge, c: req.Cost, d: tm.MaxWait, quotas: req.Limit.Quotas}
}

// refundOp returns the request to refund d, an admission of req that the
// database decided.
func refundOp(req *driver.Request, d driver.Decision) op {
	b := d.Booking
	return op{key: req.Key, op: opRefund, a: b.TAT, b: b.Prev, c: b.Gen, d: d.Start() / int64(tick), e: req.Cost,
		quotas: req.Limit.Quotas, refund: true}
}

// pauseOp returns the request to pause key for d, rounded up to a tick so
// that the pause is never shorter than asked.
func pauseOp(key string, d time.Duration) op {
	return op{key: key, op: opPause, a: driver.Ticks(min(max(d, 0), driver.MaxDuration), tick)}
}

// reply is the function's answer to a request.
type reply struct {
	allowed   bool
	wait, now int64 // ticks
	tat, prev int64 // ticks; the booking
	gen       int64
	fresh     int64 // ticks; when the state becomes fresh, 0 if it is
}

func (r reply) decision() driver.Decision {
	d := driver.Decision{
		Allowed: r.allowed,
		Wait:    time.Duration(r.wait) * tick,
		Now:     r.now * int64(tick),
	}
	if r.allowed {
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
		allowed              []int32
		wait, now, tat, prev []int64
		gen, fresh           []int64
	)
	ukeys := sortedKeys(ops, kidx)
	for i, o := range ops {
		kinds[i], fa[i], fb[i], fc[i], fd[i], fe[i] = o.op, o.a, o.b, o.c, o.d, o.e
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
	for retried := false; ; retried = true {
		if err := s.ensureSchema(ctx); err != nil {
			return nil, err
		}
		err := s.pool.QueryRow(ctx, s.sql.decide, s.mode,
			ukeys, kidx, kinds, fa, fb, fc, fd, fe, qn, qw, qm, clock, s.durable).
			Scan(&allowed, &wait, &now, &tat, &prev, &gen, &fresh)
		if err == nil {
			break
		}
		if retried || !s.schemaGone(err) {
			return nil, err
		}
	}
	if len(allowed) != n || len(wait) != n || len(now) != n || len(tat) != n || len(prev) != n || len(gen) != n || len(fresh) != n {
		return nil, fmt.Errorf("pgstore: the function replied %d decisions for %d requests", len(allowed), n)
	}
	out := make([]reply, n)
	for i := range out {
		out[i] = reply{allowed: allowed[i] == 1, wait: wait[i], now: now[i], tat: tat[i], prev: prev[i], gen: gen[i], fresh: fresh[i]}
	}
	return out, nil
}

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
// (driver.UnbookAll), so that consecutive ones of a key all come back.
// It asks the database even while the Store counts it as down: the
// admissions were made there.
func (s *Store) giveBack(ctx context.Context, admitted []driver.Admission) {
	var ops []op
	for _, a := range driver.UnbookAll(admitted) {
		ops = append(ops, refundOp(&a.Request, a.Decision))
	}
	s.run(ctx, ops)
}

// An admission is a call of Admit, Refund or Pause: its request to the
// function, and for an admission the request it decides.
type admission struct {
	op  op
	req driver.Request
}

// sendAdmits sends the calls queued as one batch.
func (s *Store) sendAdmits(ctx context.Context, r *coalesce.Round[admission, reply]) {
	r.Take()
	if len(r.Calls) == 0 {
		return
	}
	ops := make([]op, len(r.Calls))
	for i, c := range r.Calls {
		ops[i] = c.Req.op
	}
	replies, err := s.run(ctx, ops)
	for i, c := range r.Calls {
		if err != nil {
			c.Err = err
		} else {
			c.Ans = replies[i]
		}
	}
}

// giveBackAdmits gives back what the database admitted for Admit calls
// whose callers gave up while their round trip was in flight. A refund or
// pause whose caller left applied all the same.
func (s *Store) giveBackAdmits(calls []*coalesce.Call[admission, reply]) {
	var refunds []driver.Admission
	for _, c := range calls {
		if c.Err == nil && c.Ans.allowed && c.Req.op.op == opAdmit {
			refunds = append(refunds, driver.Admission{Request: c.Req.req, Decision: c.Ans.decision()})
		}
	}
	if len(refunds) > 0 {
		s.giveBack(context.Background(), refunds)
	}
}
