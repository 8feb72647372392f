package driver_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// fuzzReader decodes fuzz bytes; past the end it reads zeros.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzReader) uint64() uint64 {
	var buf [8]byte
	n := copy(buf[:], r.b)
	r.b = r.b[n:]
	return binary.LittleEndian.Uint64(buf[:])
}

// pick returns one of choices, or, for the byte just past them, any int64.
func (r *fuzzReader) pick(choices ...int64) int64 {
	i := int(r.byte()) % (len(choices) + 1)
	if i == len(choices) {
		return int64(r.uint64())
	}
	return choices[i]
}

// maxBurst returns the largest burst rate/period allows: ⌊MaxDuration ×
// rate / period⌋, or 1 for an invalid rate or period.
func maxBurst(rate int64, period time.Duration) int64 {
	if rate < 1 || period < 1 {
		return 1
	}
	b := new(big.Int).Mul(big.NewInt(int64(driver.MaxDuration)), big.NewInt(rate))
	b.Quo(b, big.NewInt(int64(period)))
	if !b.IsInt64() {
		return math.MaxInt64
	}
	return b.Int64()
}

const (
	opDecide = iota
	opRefund
	opPause
)

type fuzzOp struct {
	kind    int
	step    time.Duration // the clock advances by step first
	cost    int64
	maxWait time.Duration
	pick    uint64        // which pending admission to refund
	pause   time.Duration // pause from now
}

type fuzzCase struct {
	lim  driver.Limit
	unit time.Duration
	base int64 // the first now, in nanoseconds
	ops  []fuzzOp
}

const d1 = 24 * time.Hour

func decodeFuzzCase(data []byte) fuzzCase {
	r := &fuzzReader{b: data}
	var c fuzzCase
	rate := r.pick(1, 2, 3, 7, 10, 1000, 1_000_000_000, math.MaxInt64, 0, -1)
	period := time.Duration(r.pick(1, 2, 3, int64(time.Microsecond), 1500, int64(time.Millisecond), int64(100*time.Millisecond),
		int64(time.Second), int64(time.Minute), int64(time.Hour), int64(d1), int64(driver.MaxDuration), int64(driver.MaxDuration+1), math.MaxInt64, 0))
	mb := maxBurst(rate, period)
	burst := r.pick(1, 2, 3, 5, 10, 100, mb, mb-1, mb/2+1, mb+1, math.MaxInt64, 0)
	c.lim = driver.Limit{Rate: rate, Period: period, Burst: burst}
	for range r.byte() % 3 {
		q := driver.Quota{
			Max: r.pick(1, 2, 3, 5, 10, 100, burst, burst+1, math.MaxInt64, 0),
			Window: time.Duration(r.pick(1, 150, 999, 1000, 1001, 1500, int64(time.Millisecond), int64(time.Second), int64(time.Minute),
				int64(time.Hour), int64(d1), int64(driver.MaxDuration), int64(driver.MaxDuration+1), int64(period), int64(period)*3, 0)),
		}
		c.lim.Quotas = append(c.lim.Quotas, q)
	}
	flags := r.byte()
	c.unit = time.Nanosecond
	if flags&1 != 0 {
		c.unit = time.Microsecond
	}
	c.base = []int64{t0, 0, 4e18, t0 + 123456789}[flags>>1&3]

	scales := []time.Duration{0, 1, time.Microsecond, time.Millisecond, time.Second, time.Minute, time.Hour}
	for len(r.b) > 0 && len(c.ops) < 300 {
		var op fuzzOp
		kind := r.byte()
		op.step = scales[int(r.byte())%len(scales)] * time.Duration(r.byte())
		switch kind % 10 {
		case 0:
			op.kind = opRefund
			op.pick = uint64(r.byte())
		case 1:
			op.kind = opPause
			op.pause = time.Duration(r.pick(0, 1, int64(time.Millisecond), int64(time.Second), int64(time.Hour), int64(driver.MaxDuration), -1))
		default:
			op.kind = opDecide
			op.cost = r.pick(1, 1, 2, 3, burst, burst-1, burst+1, 0, -1, math.MaxInt64)
			if kind%10 == 9 && burst > 0 {
				op.cost = 1 + int64(r.uint64()%uint64(burst))
			}
			op.maxWait = time.Duration(r.pick(0, 0, 1, int64(time.Microsecond), int64(time.Millisecond), int64(time.Second), int64(time.Hour),
				int64(driver.MaxDuration), math.MaxInt64, -int64(time.Second), int64(period), int64(period)*int64(max(burst, 1))))
		}
		c.ops = append(c.ops, op)
	}
	return c
}

// wantErr returns the error Decide must return for cost under lim, or nil.
func wantErr(lim driver.Limit, cost int64) error {
	switch {
	case cost < 1:
		return driver.ErrInvalidCost
	case lim.Validate() != nil:
		return driver.ErrInvalidLimit
	case cost > lim.Burst:
		return driver.ErrImpossible
	}
	for _, q := range lim.Quotas {
		if cost > q.Max {
			return driver.ErrImpossible
		}
	}
	return nil
}

// onlyPruned reports whether every quota slot of after is in before with
// the same count: slots may have been dropped, none added or charged.
func onlyPruned(after, before *driver.State) bool {
	for _, q := range after.Quotas {
		for _, s := range q.Slots {
			found := false
			for _, p := range before.Quotas {
				if p.Window == q.Window && slices.Contains(p.Slots, s) {
					found = true
				}
			}
			if !found {
				return false
			}
		}
	}
	return true
}

type admitted struct {
	req      driver.Request
	d        driver.Decision
	refunded bool
}

// replay plays c against one State, checking every decision, and checks
// the admitted starts that were not refunded against the reference
// checker.
func replay(t testing.TB, c fuzzCase) {
	t.Helper()
	u := int64(c.unit)
	var st driver.State
	now := c.base / u // in ticks
	var (
		adm        []admitted
		pausedTill int64 // in nanoseconds
	)
	for i, op := range c.ops {
		now += int64(op.step) / u
		switch op.kind {
		case opPause:
			until := now + int64(op.pause)/u
			driver.Pause(&st, until)
			pausedTill = max(pausedTill, until*u)
		case opRefund:
			// Give back an admission that has not started yet.
			var pending []int
			for j, a := range adm {
				if !a.refunded && a.d.Start() >= now*u {
					pending = append(pending, j)
				}
			}
			if len(pending) > 0 {
				a := &adm[pending[op.pick%uint64(len(pending))]]
				driver.Refund(&st, &a.req, a.d, c.unit)
				a.refunded = true
			}
		case opDecide:
			req := driver.Request{Key: "k", Limit: c.lim, Cost: op.cost, MaxWait: op.maxWait}
			before := cloneState(&st)
			d, err := driver.Decide(&st, &req, c.unit, now)
			what := fmt.Sprintf("op %d: Decide(%v, cost %d, maxWait %v) at %d ticks of %v", i, c.lim, op.cost, op.maxWait, now, c.unit)
			if want := wantErr(c.lim, op.cost); want != nil || err != nil {
				require.NotNil(t, want, "%s: unexpected error %v", what, err)
				require.ErrorIs(t, err, want, what)
				require.False(t, d.Allowed, "%s failed with %v but allowed", what, err)
				require.True(t, statesEqual(&st, before), "%s failed with %v but changed the state", what, err)
				continue
			}
			require.Equal(t, now*u, d.Now, "%s: Now", what)
			require.Zero(t, d.Wait%c.unit, "%s: Wait %v, want a whole number of ticks", what, d.Wait)
			// Nothing is booked further ahead than MaxDuration.
			maxWait := min(max(op.maxWait, 0), driver.MaxDuration)
			if !d.Allowed {
				require.Greater(t, d.Wait, maxWait, "%s refused: retry-after, want more than maxWait", what)
				// A refusal charges nothing: the bucket's level and
				// pause are unchanged; quota slots may only be pruned.
				require.Equal(t, before.TAT, st.TAT, "%s: a refusal charged the TAT", what)
				require.Equal(t, before.Paused, st.Paused, "%s: a refusal changed the pause", what)
				require.True(t, onlyPruned(&st, before), "%s: a refusal charged the quotas: %+v, were %+v", what, st.Quotas, before.Quotas)
				checkRetryAfter(t, before, req, c.unit, now, d)
				continue
			}
			require.GreaterOrEqual(t, d.Wait, time.Duration(0), "%s admitted in the past", what)
			require.LessOrEqual(t, d.Wait, maxWait, "%s admitted beyond maxWait", what)
			require.GreaterOrEqual(t, d.Start(), pausedTill, "%s admitted during a pause", what)
			if d.Wait > 0 { // booked at the earliest: not one tick earlier
				early := req
				early.MaxWait = d.Wait - c.unit
				d2, _ := driver.Decide(cloneState(before), &early, c.unit, now)
				require.False(t, d2.Allowed, "%s booked %v ahead, but with maxWait %v it is admitted after %v", what, d.Wait, early.MaxWait, d2.Wait)
			}
			adm = append(adm, admitted{req: req, d: d})
		}
	}

	var starts []backendtest.Start
	for _, a := range adm {
		if !a.refunded {
			starts = append(starts, backendtest.Start{At: a.d.Start(), Cost: a.req.Cost})
		}
	}
	require.NoError(t, backendtest.Check(userLimit(c.lim), starts), "%v at %v from %d", c.lim, c.unit, c.base)

	// From FreshAt on, the state decides as a zero State.
	if c.lim.Validate() == nil && wantErr(c.lim, 1) == nil {
		at := max(driver.FreshAt(&st), now)
		var zero driver.State
		req := driver.Request{Key: "k", Limit: c.lim, Cost: 1, MaxWait: c.lim.Interval()}
		d1, err := driver.Decide(&st, &req, c.unit, at)
		require.NoError(t, err, "at FreshAt %d", at)
		d2, err := driver.Decide(&zero, &req, c.unit, at)
		require.NoError(t, err, "at FreshAt %d, on a zero State", at)
		require.Equal(t, outcomeOf(d2), outcomeOf(d1), "at FreshAt %d: decision %+v, against a zero State's %+v", at, d1, d2)
		require.Equal(t, d2.Booking.TAT, d1.Booking.TAT, "at FreshAt %d: decision %+v, against a zero State's %+v", at, d1, d2)
	}
}

func statesEqual(a, b *driver.State) bool {
	return a.TAT == b.TAT && a.Paused == b.Paused && slices.EqualFunc(a.Quotas, b.Quotas, func(x, y driver.QuotaState) bool {
		return x.Window == y.Window && slices.Equal(x.Slots, y.Slots)
	})
}

// fuzzSeed encodes a case for the decoder: the indexes into its choice
// lists, then operations as (kind, scale, multiplier, argument index).
func fuzzSeed(rate, period, burst byte, quotas [][2]byte, flags byte, ops ...byte) []byte {
	b := []byte{rate, period, burst, byte(len(quotas))}
	for _, q := range quotas {
		b = append(b, q[0], q[1])
	}
	return append(append(b, flags), ops...)
}

func FuzzDecide(f *testing.F) {
	// Indexes: rate 0:1 2:3 5:1000 7:MaxInt64; period 3:1µs 5:1ms 7:1s
	// 9:1h 11:MaxDuration; burst 0:1 4:10 6:max 8:max/2+1; quota max
	// 0:1 4:10 6:burst, window 5:1500ns 7:1s 9:1h 11:MaxDuration;
	// flags bit 0: microseconds, bits 1-2: base. An operation is kind (0
	// refund, 1 pause, else decide), time scale and multiplier, then an
	// argument: refund pick, pause index, or cost and maxWait indexes.
	steady := []byte{}
	for range 40 {
		steady = append(steady, 2, 3, 50, 0, 0) // decide cost 1 maxWait 0 after 50ms
		steady = append(steady, 3, 3, 20, 0, 5) // decide cost 1 maxWait 1s after 20ms
	}
	f.Add(fuzzSeed(5, 7, 4, nil, 0, steady...))
	f.Add(fuzzSeed(5, 7, 4, [][2]byte{{4, 7}, {6, 9}}, 0, steady...))
	f.Add(fuzzSeed(2, 7, 1, [][2]byte{{1, 5}, {2, 6}}, 1, steady...))
	f.Add(fuzzSeed(0, 11, 0, [][2]byte{{0, 11}}, 2, 2, 0, 0, 0, 7, 2, 6, 3, 0, 8, 3, 6, 5, 4, 7))
	f.Add(fuzzSeed(7, 0, 9, nil, 0, 2, 0, 0, 9, 7))
	f.Add(fuzzSeed(7, 0, 6, [][2]byte{{7, 0}}, 0, 2, 0, 0, 0, 7, 2, 1, 1, 2, 7))
	f.Add(fuzzSeed(1, 7, 3, [][2]byte{{3, 7}}, 4,
		2, 4, 0, 0, 5, 2, 4, 0, 0, 5, 2, 4, 0, 0, 5, 0, 0, 0, 0, 2, 4, 0, 0, 5, 1, 4, 1, 3, 2, 4, 1, 0, 6))
	f.Add(fuzzSeed(3, 5, 2, [][2]byte{{3, 7}, {5, 9}}, 1,
		2, 3, 1, 2, 6, 2, 3, 1, 2, 6, 0, 0, 0, 1, 2, 3, 1, 2, 6, 0, 1, 0, 1, 1, 2, 2, 6, 6, 2, 3, 1, 1, 6))
	// Burst × interval near MaxDuration with an interval rounded up: the
	// whole burst at once, then one more unit.
	f.Add(fuzzSeed(5, 0, 6, nil, 0, 2, 0, 0, 4, 0, 2, 0, 0, 0, 0))
	f.Add(fuzzSeed(0, 0, 6, nil, 1, 2, 0, 0, 4, 0, 2, 0, 0, 0, 0))
	f.Add(fuzzSeed(3, 11, 6, nil, 0, 2, 0, 0, 4, 7, 2, 0, 0, 0, 7))
	f.Add([]byte{})
	f.Add([]byte("\x08\x0e\x0b\x02\x00\x00\x07\x0c\xff"))

	f.Fuzz(func(t *testing.T, data []byte) {
		replay(t, decodeFuzzCase(data))
	})
}

// userLimit returns l as package bucket's Limit, for the reference checker.
func userLimit(l driver.Limit) bucket.Limit {
	return bucket.Limit{Rate: l.Rate, Period: l.Period, Burst: l.Burst, Quotas: l.Quotas}
}
