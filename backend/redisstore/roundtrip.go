package redisstore

import (
	"context"
	"encoding/binary"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/coalesce"
	"github.com/redis/go-redis/v9"
)

// giveBack refunds admissions Redis made for callers that gave up, given
// in the order Redis made them, in one round trip (driver.UnbookAll), so
// that consecutive ones of a key all come back. It asks Redis even while
// the Store counts it as down: the admissions were made there.
func (s *Store) giveBack(ctx context.Context, admitted []driver.Admission) {
	var ops []op
	for _, a := range driver.UnbookAll(admitted) {
		ops = append(ops, op{key: s.prefix + a.Key, args: appendRefund(nil, &a.Request, a.Decision, false)})
	}
	// Every admission's lease, joined into a refund or not.
	for _, a := range admitted {
		if a.Limit.Inflight > 0 {
			ops = append(ops, s.leaseOp(a.Key, appendLeaseOp(nil, opRelease, 0, a.Lease)))
		}
	}
	s.run(ctx, ops, make([]result, len(ops)))
}

// An op is one request of the script: a bucket's Redis key, its lease
// set's for an op on a lease (else ""), and the request's arguments.
type op struct {
	key, lease string
	args       []byte
}

// opOf returns the op of args, a request of the script about key's
// bucket.
func (s *Store) opOf(key string, args []byte) op {
	if leaseAt(args) >= 0 {
		return s.leaseOp(key, args)
	}
	return op{key: s.prefix + key, args: args}
}

// leaseOp returns the op of args, a request of an op on a lease of key.
func (s *Store) leaseOp(key string, args []byte) op {
	k := s.prefix + key
	return op{key: k, lease: leaseKey(s.leasePrefix, k), args: args}
}

// A result is an op's reply, or why there is none.
type result struct {
	r   reply
	err error
}

// maxGroup is the most requests sent in one script call. A call's own
// cost in Redis (and its TIME) is about as much as a request's, so
// grouping nearly halves Redis's time per admission; a group of 64 holds
// Redis for about half a millisecond.
const maxGroup = 64

// runOne runs o alone.
func (s *Store) runOne(ctx context.Context, o op) result {
	var out [1]result
	s.run(ctx, []op{o}, out[:])
	return out[0]
}

// run sends ops as one pipeline, up to s.group of them per script call,
// and sets out[i] to the result of ops[i].
func (s *Store) run(ctx context.Context, ops []op, out []result) {
	cmds := make([]*redis.Cmd, 0, (len(ops)+s.group-1)/s.group)
	for i := 0; i < len(ops); i += s.group {
		cmds = append(cmds, s.cmd(ctx, ops[i:min(i+s.group, len(ops))]))
	}
	s.pipeline(ctx, cmds)
	for k, cmd := range cmds {
		parseReplies(cmd, out[k*s.group:min((k+1)*s.group, len(ops))])
	}
}

// cmd returns an EVALSHA of the script on ops' keys, their requests one
// after another in one argument. The keys of the buckets come first, one
// per request, then the lease sets of the requests on leases, each named
// once for a run of requests on one set, the requests renumbered to them.
func (s *Store) cmd(ctx context.Context, ops []op) *redis.Cmd {
	args := make([]any, 3, 5+len(ops))
	args[0], args[1] = "evalsha", scriptSHA
	for _, o := range ops {
		args = append(args, o.key)
	}
	reqs := ops[0].args
	if len(ops) > 1 {
		n := 0
		for _, o := range ops {
			n += len(o.args)
		}
		all := make([]byte, 0, n)
		for _, o := range ops {
			start := len(all)
			all = append(all, o.args...)
			if o.lease == "" {
				continue
			}
			if args[len(args)-1] != o.lease {
				args = append(args, o.lease)
			}
			// The set's index in KEYS: its place among args, less the
			// three before the keys.
			binary.LittleEndian.PutUint64(all[start+leaseAt(o.args):], uint64(len(args)-3))
		}
		reqs = all
	} else if ops[0].lease != "" {
		args = append(args, ops[0].lease) // KEYS[2], as appendLease has it
	}
	args[2] = len(args) - 3
	args = append(args, reqs)
	cmd := redis.NewCmd(ctx, args...)
	cmd.SetFirstKeyPos(3)
	return cmd
}

// The script's digest, boxed once rather than per command.
var scriptSHA any = gcra.Hash()

// pipeline sends cmds as one pipeline (or a lone command), and again with
// EVAL those that found the script missing (after a restart or SCRIPT
// FLUSH).
func (s *Store) pipeline(ctx context.Context, cmds []*redis.Cmd) {
	if len(cmds) == 1 {
		s.client.Process(ctx, cmds[0])
	} else {
		pipe := s.client.Pipeline()
		for _, c := range cmds {
			pipe.Process(ctx, c)
		}
		pipe.Exec(ctx)
	}
	var again []int
	for i, c := range cmds {
		if isNoScript(c.Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return
	}
	pipe := s.client.Pipeline()
	for _, i := range again {
		args := cmds[i].Args()
		c := redis.NewCmd(ctx, append([]any{"eval", gcraSource}, args[2:]...)...)
		c.SetFirstKeyPos(3)
		cmds[i] = c
		pipe.Process(ctx, c)
	}
	pipe.Exec(ctx)
}

// An admission is an Admit call's request and the script's op for it.
type admission struct {
	req driver.Request
	op  op
}

// sendAdmits sends the Admit calls queued as one pipeline.
func (s *Store) sendAdmits(ctx context.Context, r *coalesce.Round[admission, reply]) {
	r.Take()
	if len(r.Calls) == 0 {
		return
	}
	ops := make([]op, len(r.Calls))
	for i, c := range r.Calls {
		ops[i] = c.Req.op
	}
	res := make([]result, len(ops))
	s.run(ctx, ops, res)
	for i, c := range r.Calls {
		c.Ans, c.Err = res[i].r, res[i].err
	}
}

// giveBackAdmits gives back what Redis admitted for Admit calls whose
// callers gave up while their pipeline was in flight.
func (s *Store) giveBackAdmits(calls []*coalesce.Call[admission, reply]) {
	var refunds []driver.Admission
	for _, c := range calls {
		if c.Err == nil && c.Ans.allowed {
			refunds = append(refunds, driver.Admission{Request: c.Req.req, Decision: c.Ans.decision()})
		}
	}
	if len(refunds) > 0 {
		s.giveBack(context.Background(), refunds)
	}
}
