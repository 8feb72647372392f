package redisstore

import (
	_ "embed"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/redis/go-redis/v9"
)

// The script runs the mathematics of driver.Decide, Refund, Pause and
// Learn in Redis; see the comment at its top for its arguments and
// replies.
//
//go:embed gcra.lua
var gcraSource string

var gcra = redis.NewScript(gcraSource)

// tick is the unit of the script's clock: Redis TIME in integer
// microseconds, exact in a Lua double (nanoseconds since 1970 are not).
const tick = time.Microsecond

// MaxQuotaUnits is the largest quota the script counts exactly: slot
// counts are Lua doubles, exact below 2^53. A quota's Max above it is
// lowered to it, which can only under-admit, and only a quota of more
// than 10^15 units per window notices; a limit with quotas and a Burst
// above it is rejected, as its costs could not be counted exactly.
const MaxQuotaUnits = 1 << 50

const (
	opAdmit  = 1
	opRefund = 2
	opPause  = 3
	// Ops on a lease: their requests end with the lease (appendLease).
	opAdmitLeased  = 4
	opRefundLeased = 5
	opRenew        = 6
	opRelease      = 7
	opLearn        = 8
)

// learnedOps is added to opAdmit or opAdmitLeased for an admission of a
// learned limit, whose terms follow its fields (learnedTerms): ops 9 and
// 12.
const learnedOps = 8

// The script's request is seven int64s, op and its fields, then n pairs,
// then for ops on a lease the lease; see the comment at the top of
// gcra.lua. Requests about a learned limit carry learnedTerms more bytes
// after their fields.
const learnedTerms = 3 * 8

// appendAdmit appends the script's request for req, a valid request: the
// integers of driver.Decide in ticks (driver.Request.Terms), computed here
// so that the script only adds and compares. Terms clamps every interval
// to MaxDuration, so every time the script computes stays below 2^53.
func appendAdmit(b []byte, req *driver.Request) ([]byte, error) {
	lim := &req.Limit
	if len(lim.Quotas) > 0 && lim.Burst > MaxQuotaUnits {
		return nil, &driver.LimitError{Field: "Burst", Reason: fmt.Sprintf("%d exceeds %d, the most redisstore counts exactly in a quota", lim.Burst, int64(MaxQuotaUnits))}
	}
	tm := req.Terms(tick)
	op := int64(opAdmit)
	if lim.Inflight > 0 {
		op = opAdmitLeased
	}
	learned := lim.Learned()
	if learned {
		op += learnedOps
	}
	b = appendInt(b, op)
	b = appendInt(b, tm.Capacity)
	b = appendInt(b, tm.Charge)
	b = appendInt(b, req.Cost)
	b = appendInt(b, tm.MaxWait)
	b = appendInt(b, lim.Inflight)
	b = appendInt(b, int64(len(lim.Quotas)))
	if learned {
		b = appendInt(b, tm.Interval)
		b = appendInt(b, tm.Floor)
		b = appendInt(b, tm.Span)
	}
	for _, q := range lim.Quotas {
		b = appendInt(b, driver.Ticks(q.Window, tick))
		b = appendInt(b, min(q.Max, MaxQuotaUnits))
	}
	if lim.Inflight > 0 {
		b = appendLease(b, req.LeaseTTLTicks(tick), req.Lease)
	}
	return b, nil
}

// appendRefund appends the script's request to refund d, an admission of
// req that Redis decided; with release, and a capped limit, it releases
// the admission's lease too, whether or not the refund applies.
func appendRefund(b []byte, req *driver.Request, d driver.Decision, release bool) []byte {
	release = release && req.Limit.Inflight > 0
	if release {
		b = appendInt(b, opRefundLeased)
	} else {
		b = appendInt(b, opRefund)
	}
	b = appendInt(b, d.Booking.TAT)
	b = appendInt(b, d.Booking.Prev)
	b = appendInt(b, d.Booking.Gen)
	b = appendInt(b, d.Start()/int64(tick))
	b = appendInt(b, req.Cost)
	b = appendInt(b, int64(len(req.Limit.Quotas)))
	for _, q := range req.Limit.Quotas {
		b = appendInt(b, driver.Ticks(q.Window, tick))
		b = appendInt(b, 0)
	}
	if release {
		b = appendLease(b, 0, req.Lease)
	}
	return b
}

// appendLeaseOp appends the script's request to renew lease id for ttl
// ticks (opRenew) or to release it (opRelease, ttl 0).
func appendLeaseOp(b []byte, op, ttl int64, id driver.LeaseID) []byte {
	b = appendInt(b, op)
	for range 6 {
		b = appendInt(b, 0)
	}
	return appendLease(b, ttl, id)
}

// appendLease appends the lease that ends a request of an op on a lease:
// the index in KEYS of the bucket's lease set, its time to live in ticks,
// and its ID. The index is 2, where a call of this one request has the
// set; cmd renumbers it in calls of several.
func appendLease(b []byte, ttl int64, id driver.LeaseID) []byte {
	b = appendInt(b, 2)
	b = appendInt(b, ttl)
	b = appendInt(b, int64(len(id)))
	return append(b, id...)
}

// leaseAt returns the offset in args, a request of an op on a lease, of
// its lease set's index in KEYS, or -1 for a request of another op.
func leaseAt(args []byte) int {
	op, at := readInt(args, 0), 7*8+16*int(readInt(args, 6*8))
	if op > opLearn {
		op, at = op-learnedOps, at+learnedTerms
	}
	if op < opAdmitLeased || op > opRelease {
		return -1
	}
	return at
}

func readInt(b []byte, at int) int64 { return int64(binary.LittleEndian.Uint64(b[at:])) }

// appendPause appends the script's request to pause a bucket for d,
// rounded up to a tick so that the pause is never shorter than asked.
func appendPause(b []byte, d time.Duration) []byte {
	b = appendInt(b, opPause)
	b = appendInt(b, driver.Ticks(min(max(d, 0), driver.MaxDuration), tick))
	for range 5 {
		b = appendInt(b, 0)
	}
	return b
}

// appendLearn appends the script's request to learn fb for a key of lim,
// a learned limit, both valid: driver.Learn's numbers in ticks. Remaining
// units are sent as at most the ticks to their reset, which gives the
// same pace (one unit a tick at most) and keeps them exact in a double;
// a Gen beyond 2^53 is sent as 2^53, which no state's generation reaches.
func appendLearn(b []byte, lim *driver.Limit, fb *driver.Feedback) []byte {
	tm := (&driver.Request{Limit: *lim, Cost: 1}).Terms(tick)
	var flags int64
	if fb.Throttled {
		flags |= 1
	}
	if fb.HasRemaining {
		flags |= 2
	}
	reset, ttl := driver.Ticks(fb.Reset, tick), fb.TTL
	if ttl == 0 {
		ttl = driver.DefaultLearnTTL
	}
	b = appendInt(b, opLearn)
	b = appendInt(b, tm.Interval)
	b = appendInt(b, tm.Floor)
	b = appendInt(b, flags)
	b = appendInt(b, min(fb.Gen, 1<<53))
	b = appendInt(b, driver.Ticks(fb.Interval, tick))
	b = appendInt(b, 0) // no pairs
	b = appendInt(b, min(fb.Remaining, reset))
	b = appendInt(b, reset)
	return appendInt(b, driver.Ticks(ttl, tick))
}

func appendInt(b []byte, v int64) []byte { return binary.LittleEndian.AppendUint64(b, uint64(v)) }

// reply is the script's answer to an admission. Its two bools are
// together, so that it takes 64 bytes, as it did before interval: every
// batch holds one per admission.
type reply struct {
	allowed   bool
	atCap     bool  // refused at the cap of the limit's leases
	wait, now int64 // ticks
	tat, prev int64 // ticks; the booking
	gen       int64
	fresh     int64 // ticks; when the state becomes fresh, 0 if it is
	// interval is, in ticks, the interval an admission of a learned limit
	// applied or a learning left; 0 for a fixed limit (the limit's own
	// then, as decisionOf finds it) and at the cap.
	interval int64
}

// decisionOf returns r as the decision of req: its Interval the script's
// for a learned limit, else the limit's own.
func (r reply) decisionOf(req *driver.Request) driver.Decision {
	if r.interval == 0 && !r.atCap {
		// ⌈⌈Period/tick⌉/Rate⌉, as Terms rounds, for Period ≥ 1.
		r.interval = (int64(req.Limit.Period)-1)/int64(tick)/req.Limit.Rate + 1
	}
	return r.decision()
}

// decision returns r as a decision; for a fixed limit, without the
// Interval decisionOf adds.
func (r reply) decision() driver.Decision {
	d := driver.Decision{
		Allowed:  r.allowed,
		Wait:     time.Duration(r.wait) * tick,
		Now:      r.now * int64(tick),
		Interval: time.Duration(r.interval) * tick,
		AtCap:    r.atCap,
	}
	if r.allowed {
		d.Booking = driver.Booking{TAT: r.tat, Prev: r.prev, Gen: r.gen}
	}
	return d
}

// A request's reply is replySize bytes, seven int64s; about a learned
// limit, its first int64 is learnedReply more, and the interval follows.
const (
	replySize    = 7 * 8
	learnedReply = 4
)

// parseReplies parses the reply of a script call of len(out) requests:
// their records, followed, if some failed, by the failures' messages.
func parseReplies(cmd *redis.Cmd, out []result) {
	err := cmd.Err()
	var (
		recs  string
		fails []any
		ok    bool
	)
	switch v := cmd.Val().(type) {
	case string:
		recs, ok = v, true
	case []any:
		if len(v) > 1 {
			recs, ok = v[0].(string)
			fails = v[1:]
		}
	}
	at := 0 // the offset of out[k]'s record
	for k := 0; k < len(out) && err == nil && ok; k++ {
		if at+replySize > len(recs) {
			ok = false
			break
		}
		n := func(i int) int64 { return int64(binary.LittleEndian.Uint64([]byte(recs[at+8*i : at+8*i+8]))) }
		v, size, interval := n(0), replySize, int64(0)
		if v >= learnedReply {
			if at+replySize+8 > len(recs) {
				ok = false
				break
			}
			v, size, interval = v-learnedReply, replySize+8, n(7)
		}
		if v == -1 { // this request failed; n(1) numbers its message
			msg := fmt.Sprintf("request %d failed without a message", k)
			if i := n(1) - 1; i >= 0 && i < int64(len(fails)) {
				msg, _ = fails[i].(string)
			}
			out[k] = result{err: requestError(msg)}
		} else {
			out[k] = result{r: reply{allowed: v == 1, wait: n(1), now: n(2), tat: n(3), prev: n(4), gen: n(5), fresh: n(6), atCap: v == 2, interval: interval}}
		}
		at += size
	}
	if err == nil && (!ok || at != len(recs)) {
		err = fmt.Errorf("redisstore: script replied %q, want a record for each of %d requests", cmd.Val(), len(out))
	}
	if err != nil {
		for k := range out {
			out[k] = result{err: err}
		}
	}
}

// A requestError is Redis's answer that one request of a script call
// failed (for example WRONGTYPE, or OOM for its write). It is a
// redis.Error: Redis answered.
type requestError string

func (e requestError) Error() string { return string(e) }
func (requestError) RedisError()     {}
