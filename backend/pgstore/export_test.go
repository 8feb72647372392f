package pgstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/failover"
)

// RawAdmit sends one admission straight to the database, decided at clock
// (µs) unless it is nil, and returns its decision and the moment, in µs,
// its state becomes fresh (0 if it is).
func RawAdmit(ctx context.Context, s *Store, req driver.Request, clock *int64) (driver.Decision, int64, error) {
	r, err := s.runAt(ctx, []op{admitOp(&req)}, clock)
	if err != nil {
		return driver.Decision{}, 0, err
	}
	return r[0].decision(), r[0].fresh, nil
}

// RawRefund and RawPause send a refund or a pause straight to the
// database and return the moment, in µs, the state becomes fresh (0 if
// it is).
func RawRefund(ctx context.Context, s *Store, req driver.Request, d driver.Decision, clock *int64) (int64, error) {
	r, err := s.runAt(ctx, []op{refundOp(&req, d, true)}, clock)
	if err != nil {
		return 0, err
	}
	return r[0].fresh, nil
}

func RawPause(ctx context.Context, s *Store, key string, d time.Duration, clock *int64) (int64, error) {
	r, err := s.runAt(ctx, []op{pauseOp(key, d)}, clock)
	if err != nil {
		return 0, err
	}
	return r[0].fresh, nil
}

// RawLearn sends one Learn straight to the database, at clock (µs)
// unless it is nil, and returns the interval the key applies from now
// and the moment, in µs, its state becomes fresh (0 if it is). lim must
// be a learned limit.
func RawLearn(ctx context.Context, s *Store, key string, lim driver.Limit, fb driver.Feedback, clock *int64) (time.Duration, int64, error) {
	r, err := s.runAt(ctx, []op{learnOp(key, &lim, &fb)}, clock)
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(r[0].interval) * tick, r[0].fresh, nil
}

// AdmitBatchAt decides batch in one statement at clock (µs).
func AdmitBatchAt(ctx context.Context, s *Store, batch []driver.Admission, clock int64) error {
	ops := make([]op, len(batch))
	for i := range batch {
		ops[i] = admitOp(&batch[i].Request)
	}
	r, err := s.runAt(ctx, ops, &clock)
	if err != nil {
		return err
	}
	for i := range batch {
		batch[i].Decision = r[i].decision()
	}
	return nil
}

// Sweep runs a sweep now and returns how many rows it deleted.
func Sweep(ctx context.Context, s *Store) (int64, error) { return s.sweep(ctx) }

// LeaseTable returns the quoted, schema-qualified name of s's table of
// leases.
func LeaseTable(s *Store) string { return s.schema + ".leases" }

// Pool returns the pool s was made with.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

var IsUnavailable = isUnavailable

// IsLocal reports whether an admission was decided by the FailLocal
// fallback.
func IsLocal(d driver.Decision) bool { return failover.IsLocal(d) }

// LockKey is the advisory lock that s's batches take, shared or alone.
func LockKey(s *Store) int64 { return lockKey(s.schema) }

// A RawOp is one request of a statement of the function: an admission,
// a refund (releasing its lease), a pause, a renewal or a release.
type RawOp struct{ o op }

func AdmitOp(req driver.Request) RawOp                     { return RawOp{admitOp(&req)} }
func RefundOp(req driver.Request, d driver.Decision) RawOp { return RawOp{refundOp(&req, d, true)} }
func PauseOp(key string, d time.Duration) RawOp            { return RawOp{pauseOp(key, d)} }
func ReleaseOp(l driver.LeaseRef) RawOp                    { return RawOp{releaseOp(l)} }
func LearnOp(key string, lim driver.Limit, fb driver.Feedback) RawOp {
	return RawOp{learnOp(key, &lim, &fb)}
}
func RenewOp(l driver.LeaseRef, ttl time.Duration) RawOp {
	return RawOp{renewOp(l, driver.Ticks(ttl, tick))}
}

// RunAt decides ops in one statement at clock (µs), and returns each
// one's decision (a renewal's or release's Allowed: it applied; a
// learn's Interval: the interval from now on) and the moment, in µs, its
// key's state becomes fresh after it (0 if it is).
func RunAt(ctx context.Context, s *Store, ops []RawOp, clock int64) ([]driver.Decision, []int64, error) {
	raw := make([]op, len(ops))
	for i, o := range ops {
		raw[i] = o.o
	}
	r, err := s.runAt(ctx, raw, &clock)
	if err != nil {
		return nil, nil, err
	}
	ds, fresh := make([]driver.Decision, len(r)), make([]int64, len(r))
	for i := range r {
		ds[i], fresh[i] = r[i].decision(), r[i].fresh
		switch raw[i].op {
		case opRenew, opRelease:
			ds[i] = driver.Decision{Allowed: r[i].code == codeAllowed}
		case opLearn:
			ds[i] = driver.Decision{Interval: time.Duration(r[i].interval) * tick}
		}
	}
	return ds, fresh, nil
}

// MigrateTo installs s's schema up to version v only, as a Store of an
// earlier release would.
func MigrateTo(ctx context.Context, s *Store, v int) error { return s.migrate(ctx, v) }

// AdmitV1 decides req, uncapped, by decide_v1 at clock (µs) unless it is
// nil, as a process of schema version 1 does.
func AdmitV1(ctx context.Context, s *Store, req driver.Request, clock *int64) (driver.Decision, error) {
	return admitOld(ctx, s, req, clock, 1)
}

// AdmitV2 decides req by decide_v2 at clock (µs) unless it is nil, as a
// process of schema version 2 does: a learned limit at its ceiling.
func AdmitV2(ctx context.Context, s *Store, req driver.Request, clock *int64) (driver.Decision, error) {
	return admitOld(ctx, s, req, clock, 2)
}

// admitOld decides req by decide_v1 or decide_v2 (version), whose
// arguments are decide_v3's first 13 or 14, and clock and durable.
func admitOld(ctx context.Context, s *Store, req driver.Request, clock *int64, version int) (driver.Decision, error) {
	o := admitOp(&req)
	qw, qm := []int64{}, []int64{}
	for _, q := range o.quotas {
		qw, qm = append(qw, driver.Ticks(q.Window, tick)), append(qm, q.Max)
	}
	args := []any{[][]byte{[]byte(o.key)}, []int32{1}, []int32{o.op}, []int64{o.a}, []int64{o.b}, []int64{o.c}, []int64{o.d}, []int64{o.e},
		[]int32{int32(len(o.quotas))}, qw, qm}
	if version == 2 {
		args = append(args, [][]byte{o.lease}, []int64{o.ttl}, []int32{0})
	}
	args = append(args, clock, false)
	params := make([]string, len(args))
	for i := range params {
		params[i] = fmt.Sprint("$", i+1)
	}
	var allowed []int32
	var wait, now, tat, prev, gen, fresh []int64
	err := s.pool.QueryRow(ctx, fmt.Sprintf("SELECT * FROM %s.decide_v%d(%s)", s.schema, version, strings.Join(params, ", ")),
		append([]any{s.mode}, args...)...).
		Scan(&allowed, &wait, &now, &tat, &prev, &gen, &fresh)
	if err != nil {
		return driver.Decision{}, err
	}
	return reply{code: allowed[0], wait: wait[0], now: now[0], tat: tat[0], prev: prev[0], gen: gen[0], interval: o.t}.decision(), nil
}

// SweepV1 runs version 1's sweep, as a process of that version does.
func SweepV1(ctx context.Context, s *Store) (n int64, err error) {
	err = s.pool.QueryRow(ctx, `SELECT `+s.schema+`.sweep_v1($1)`, sweepChunk).Scan(&n)
	return n, err
}
