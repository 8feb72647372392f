package driver_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// t0 is a Unix time in nanoseconds, as the SQLite and Redis backends use:
// the mathematics must hold far from zero.
const t0 = int64(1_700_000_000) * int64(time.Second)

// A step is one Decide call at t0+at and the outcome it must have.
type step struct {
	at      time.Duration
	cost    int64
	maxWait time.Duration
	allowed bool
	wait    time.Duration // if allowed, the delay before the start; else the retry-after
}

func outcome(allowed bool, wait time.Duration) string {
	if allowed {
		return fmt.Sprintf("allowed after %v", wait)
	}
	return fmt.Sprintf("refused, admissible in %v", wait)
}

// decide calls Decide for cost units of lim at t0+at in nanoseconds and
// fails t on an error.
func decide(t *testing.T, st *driver.State, lim driver.Limit, at time.Duration, cost int64, maxWait time.Duration) driver.Decision {
	t.Helper()
	req := driver.Request{Key: "k", Limit: lim, Cost: cost, MaxWait: maxWait}
	d, err := driver.Decide(st, &req, time.Nanosecond, t0+int64(at))
	if err != nil {
		t.Fatalf("Decide(cost %d, maxWait %v) at t0+%v: %v", cost, maxWait, at, err)
	}
	if d.Now != t0+int64(at) {
		t.Fatalf("Decide(cost %d) at t0+%v: Now = t0+%v, want t0+%v", cost, at, time.Duration(d.Now-t0), at)
	}
	return d
}

// run plays steps against st in order.
func run(t *testing.T, st *driver.State, lim driver.Limit, steps []step) {
	t.Helper()
	for i, s := range steps {
		d := decide(t, st, lim, s.at, s.cost, s.maxWait)
		if d.Allowed != s.allowed || d.Wait != s.wait {
			t.Errorf("step %d: Decide(cost %d, maxWait %v) at t0+%v = %s, want %s",
				i, s.cost, s.maxWait, s.at, outcome(d.Allowed, d.Wait), outcome(s.allowed, s.wait))
		}
	}
}

func cloneState(st *driver.State) *driver.State {
	c := *st
	c.Quotas = slices.Clone(st.Quotas)
	for i := range c.Quotas {
		c.Quotas[i].Slots = slices.Clone(c.Quotas[i].Slots)
	}
	return &c
}

func TestDecideBurstAfterIdle(t *testing.T) {
	var st driver.State
	run(t, &st, backendtest.Limit(bucket.PerSecond(1).WithBurst(3)), []step{
		{0, 1, 0, true, 0},
		{0, 1, 0, true, 0},
		{0, 1, 0, true, 0},
		{0, 1, 0, false, time.Second},
		{time.Second, 1, 0, true, 0},
		{time.Second, 1, 0, false, time.Second},
		// A long idle refills the bucket to its burst and no further.
		{time.Hour, 1, 0, true, 0},
		{time.Hour, 1, 0, true, 0},
		{time.Hour, 1, 0, true, 0},
		{time.Hour, 1, 0, false, time.Second},
		{time.Hour + 2500*time.Millisecond, 1, 0, true, 0},
		{time.Hour + 2500*time.Millisecond, 1, 0, true, 0},
		{time.Hour + 2500*time.Millisecond, 1, 0, false, 500 * time.Millisecond},
	})
}

func TestDecideSteadyRate(t *testing.T) {
	var st driver.State
	lim := backendtest.Limit(bucket.PerSecond(10))
	var steps []step
	for k := range 50 {
		at := time.Duration(k) * 100 * time.Millisecond
		steps = append(steps,
			step{at, 1, 0, true, 0},
			step{at + 99*time.Millisecond, 1, 0, false, time.Millisecond},
		)
	}
	run(t, &st, lim, steps)

	// Paced with bookings, a steady stream lands exactly one interval apart.
	st = driver.State{}
	lim = backendtest.Limit(bucket.PerSecond(3))
	for k := range 30 {
		d := decide(t, &st, lim, 0, 1, time.Minute)
		want := time.Duration(k) * lim.Interval()
		if !d.Allowed || d.Wait != want {
			t.Fatalf("booking %d of 3/s at t0 = %s, want %s", k, outcome(d.Allowed, d.Wait), outcome(true, want))
		}
	}
}

func TestDecideCost(t *testing.T) {
	var st driver.State
	run(t, &st, backendtest.Limit(bucket.PerSecond(1).WithBurst(5)), []step{
		{0, 3, 0, true, 0},
		{0, 3, 0, false, time.Second}, // level 3: 3 more fit once it drains to 2
		{0, 2, 0, true, 0},            // 3 + 2 = 5
		{0, 1, 0, false, time.Second},
		{0, 5, 0, false, 5 * time.Second},
		{2 * time.Second, 2, 0, true, 0},
		{2 * time.Second, 1, 0, false, time.Second},
		{10 * time.Second, 5, 0, true, 0},
		{10 * time.Second, 1, 0, false, time.Second},
	})
}

// TestDecideBoundary pins the admission test level + c ≤ B at its exact
// boundary: equal is admitted, one nanosecond earlier is not.
func TestDecideBoundary(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(1).WithBurst(4))
	var st driver.State
	decide(t, &st, lim, 0, 3, 0) // level 3, TAT t0+3s
	tests := []step{
		{2 * time.Second, 3, 0, true, 0}, // level 1 + 3 = 4 = B
		{2*time.Second - 1, 3, 0, false, 1},
		{2*time.Second - 1, 3, 1, true, 1}, // booked exactly at the boundary
		{2*time.Second - 2, 3, 1, false, 2},
		{0, 1, 0, true, 0}, // level 3 + 1 = 4
		{0, 2, 0, false, time.Second},
		{3 * time.Second, 4, 0, true, 0}, // empty: the whole burst
		{3*time.Second - 1, 4, 0, false, 1},
	}
	for _, s := range tests {
		d := decide(t, cloneState(&st), lim, s.at, s.cost, s.maxWait)
		if d.Allowed != s.allowed || d.Wait != s.wait {
			t.Errorf("1/s burst 4, after cost 3 at t0: Decide(cost %d, maxWait %vns) at t0+%v = %s, want %s",
				s.cost, int64(s.maxWait), s.at, outcome(d.Allowed, d.Wait), outcome(s.allowed, s.wait))
		}
	}

	// Burst 1: the next unit is admitted exactly one interval later.
	st = driver.State{}
	run(t, &st, backendtest.Limit(bucket.PerSecond(1)), []step{
		{0, 1, 0, true, 0},
		{time.Second - 1, 1, 0, false, 1},
		{time.Second, 1, 0, true, 0},
	})
}

func TestDecideMaxWait(t *testing.T) {
	var st driver.State
	lim := backendtest.Limit(bucket.PerSecond(1))
	run(t, &st, lim, []step{
		{0, 1, 0, true, 0},
		{0, 1, 5 * time.Second, true, time.Second}, // booked at t0+1s, when the level allows
		{0, 1, 2*time.Second - 1, false, 2 * time.Second},
		{0, 1, 2 * time.Second, true, 2 * time.Second},
		{0, 1, -time.Hour, false, 3 * time.Second}, // negative: now or never
		{500 * time.Millisecond, 1, time.Hour, true, 2500 * time.Millisecond},
		{4 * time.Second, 1, 0, true, 0},
	})

	// A maxWait beyond MaxDuration books no further than MaxDuration.
	st = driver.State{}
	lim = backendtest.Limit(bucket.Every(driver.MaxDuration, 1))
	run(t, &st, lim, []step{
		{0, 1, math.MaxInt64, true, 0},
		{0, 1, math.MaxInt64, true, driver.MaxDuration},
		{0, 1, math.MaxInt64, false, 2 * driver.MaxDuration},
		{time.Hour, 1, math.MaxInt64, false, 2*driver.MaxDuration - time.Hour},
	})
}

// checkRetryAfter verifies that a refusal's Wait is exact: with maxWait 0
// the request is admitted at now+Wait and refused one tick before.
func checkRetryAfter(t testing.TB, st *driver.State, req driver.Request, unit time.Duration, now int64, d driver.Decision) {
	t.Helper()
	if d.Allowed {
		return
	}
	ticks := int64(d.Wait / unit)
	if d.Wait%unit != 0 || ticks < 1 {
		t.Fatalf("Decide(%v, cost %d) at %d refused with retry-after %v, want a positive whole number of %v", req.Limit, req.Cost, now, d.Wait, unit)
	}
	req.MaxWait = 0
	if d2, err := driver.Decide(cloneState(st), &req, unit, now+ticks); err != nil || !d2.Allowed || d2.Wait != 0 {
		t.Fatalf("Decide(%v, cost %d) at %d refused with retry-after %v, but at that time = %s (%v), want allowed at once",
			req.Limit, req.Cost, now, d.Wait, outcome(d2.Allowed, d2.Wait), err)
	}
	if d2, err := driver.Decide(cloneState(st), &req, unit, now+ticks-1); err != nil || d2.Allowed || d2.Wait != unit {
		t.Fatalf("Decide(%v, cost %d) at %d refused with retry-after %v, but one tick earlier = %s (%v), want refused for one tick",
			req.Limit, req.Cost, now, d.Wait, outcome(d2.Allowed, d2.Wait), err)
	}
}

func TestDecideRetryAfter(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(7).WithBurst(3).WithQuota(10, 2*time.Second).WithQuota(15, time.Minute))
	var st driver.State
	rng := rand.New(rand.NewPCG(1, 2))
	now := t0
	refusals := 0
	for range 2000 {
		now += rng.Int64N(int64(300 * time.Millisecond))
		req := driver.Request{Key: "k", Limit: lim, Cost: 1 + rng.Int64N(3)}
		before := cloneState(&st)
		d, err := driver.Decide(&st, &req, time.Nanosecond, now)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed {
			refusals++
			checkRetryAfter(t, before, req, time.Nanosecond, now, d)
		}
	}
	if refusals < 100 {
		t.Errorf("only %d refusals in 2000 requests: the test exercises too little", refusals)
	}
}

func TestDecidePause(t *testing.T) {
	var st driver.State
	lim := backendtest.Limit(bucket.PerSecond(10).WithBurst(3))
	driver.Pause(&st, t0+int64(5*time.Second))
	driver.Pause(&st, t0+int64(time.Second)) // a shorter pause does not shorten it
	if st.Paused != t0+int64(5*time.Second) {
		t.Fatalf("after Pause(t0+5s) and Pause(t0+1s), Paused = t0+%v, want t0+5s", time.Duration(st.Paused-t0))
	}
	run(t, &st, lim, []step{
		{0, 1, 0, false, 5 * time.Second},
		{0, 1, 5*time.Second - 1, false, 5 * time.Second},
		{0, 1, 5 * time.Second, true, 5 * time.Second}, // booked exactly at the end of the pause
		{5*time.Second - 1, 1, 0, false, 1},
		{5 * time.Second, 1, 0, true, 0},
		{5 * time.Second, 1, 0, true, 0},
		{5 * time.Second, 1, 0, false, 100 * time.Millisecond},
	})
	// A longer pause extends it, even over admissions already booked.
	driver.Pause(&st, t0+int64(time.Minute))
	run(t, &st, lim, []step{
		{10 * time.Second, 1, 0, false, 50 * time.Second},
		{time.Minute, 1, 0, true, 0},
	})
}

func TestRefund(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(1))
	req := driver.Request{Key: "k", Limit: lim, Cost: 1, MaxWait: 10 * time.Second}
	var st driver.State
	decide(t, &st, lim, 0, 1, 0)
	d2 := decide(t, &st, lim, 0, 1, 10*time.Second)
	driver.Refund(&st, &req, d2, time.Nanosecond) // the last booking: its slot is free again
	d3 := decide(t, &st, lim, 0, 1, 10*time.Second)
	if d3.Wait != time.Second {
		t.Fatalf("after refunding the last booking (t0+1s), next booking at t0+%v, want t0+1s", d3.Wait)
	}
	d4 := decide(t, &st, lim, 0, 1, 10*time.Second)
	driver.Refund(&st, &req, d3, time.Nanosecond) // d4 depends on d3: ignored
	d5 := decide(t, &st, lim, 0, 1, 10*time.Second)
	if d4.Wait != 2*time.Second || d5.Wait != 3*time.Second {
		t.Fatalf("after refunding a booking a later one depends on, bookings at t0+%v, t0+%v, want t0+2s, t0+3s", d4.Wait, d5.Wait)
	}
	for range 2 { // refunding twice is harmless
		driver.Refund(&st, &req, d5, time.Nanosecond)
	}
	driver.Refund(&st, &req, driver.Decision{}, time.Nanosecond) // a refusal refunds nothing
	// d4 is the latest admission again, but a refund came since: only the
	// latest admission with nothing refunded since can be given back.
	driver.Refund(&st, &req, d4, time.Nanosecond)
	if d := decide(t, &st, lim, 0, 1, 10*time.Second); d.Wait != 3*time.Second {
		t.Errorf("after refunding d5 twice and then d4, next booking at t0+%v, want t0+3s (d5's slot only)", d.Wait)
	}

	// A refund a later admission depends on returns no quota units either.
	lim = backendtest.Limit(bucket.PerSecond(1).WithQuota(2, time.Hour))
	req = driver.Request{Key: "k", Limit: lim, Cost: 1, MaxWait: 10 * time.Second}
	st = driver.State{}
	b1 := decide(t, &st, lim, 0, 1, 10*time.Second)
	b2 := decide(t, &st, lim, 0, 1, 10*time.Second)
	if d := decide(t, &st, lim, 0, 1, 10*time.Second); d.Allowed {
		t.Fatal("third unit of quota 2/h allowed")
	}
	driver.Refund(&st, &req, b1, time.Nanosecond)
	if d := decide(t, &st, lim, 0, 1, 10*time.Second); d.Allowed {
		t.Errorf("after refunding the first of two, next = %s, want refused (b2 depends on b1)", outcome(d.Allowed, d.Wait))
	}
	// The latest admission returns its rate slot and its quota unit.
	driver.Refund(&st, &req, b2, time.Nanosecond)
	if d := decide(t, &st, lim, 0, 1, 10*time.Second); !d.Allowed || d.Wait != time.Second {
		t.Errorf("after refunding the latest of two, next = %s, want allowed after 1s", outcome(d.Allowed, d.Wait))
	}
	if d := decide(t, &st, lim, 0, 1, 10*time.Second); d.Allowed {
		t.Error("after a refund of one unit, two more allowed")
	}

	// Units of cost c come back as c.
	lim = backendtest.Limit(bucket.PerSecond(1000).WithBurst(10).WithQuota(5, time.Hour))
	req = driver.Request{Key: "k", Limit: lim, Cost: 3}
	st = driver.State{}
	decide(t, &st, lim, 0, 2, 0)
	c3 := decide(t, &st, lim, 0, 3, 0)
	driver.Refund(&st, &req, c3, time.Nanosecond)
	w := driver.SlotWidth(int64(time.Hour))
	release := time.Duration((t0/w+1)*w - t0) // the end of t0's slot
	run(t, &st, lim, []step{
		{time.Second, 3, 0, true, 0},
		{time.Second, 1, 0, false, release + time.Hour - time.Second},
	})
}

// TestRefundTwiceAfterRebooking: Backend.Refund says refunding twice is
// harmless. A duplicate refund must not give back a later admission that
// happens to look like the refunded one.
func TestRefundTwiceAfterRebooking(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(1))
	req := driver.Request{Key: "k", Limit: lim, Cost: 1, MaxWait: 10 * time.Second}
	var st driver.State
	decide(t, &st, lim, 0, 1, 0)
	d2 := decide(t, &st, lim, 0, 1, 10*time.Second)
	driver.Refund(&st, &req, d2, time.Nanosecond)
	d3 := decide(t, &st, lim, 0, 1, 10*time.Second) // takes d2's slot: the same booking values
	driver.Refund(&st, &req, d2, time.Nanosecond)   // duplicate refund of d2
	d4 := decide(t, &st, lim, 0, 1, 10*time.Second)
	if d4.Start() == d3.Start() {
		t.Errorf("a duplicate refund of a booking freed the slot of the later booking that replaced it: two admissions start at t0+%v", time.Duration(d3.Start()-t0))
	}
	starts := []backendtest.Start{{At: t0, Cost: 1}, {At: d3.Start(), Cost: 1}, {At: d4.Start(), Cost: 1}}
	if err := backendtest.Check(userLimit(lim), starts); err != nil {
		t.Error(err)
	}
}

// TestRefundQuotaTwice: a duplicate refund must not return quota units
// twice, taking back units of other admissions in the same slot.
func TestRefundQuotaTwice(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(1000).WithBurst(10).WithQuota(2, time.Hour))
	req := driver.Request{Key: "k", Limit: lim, Cost: 1}
	var st driver.State
	var starts []backendtest.Start
	decide(t, &st, lim, 0, 1, 0)
	starts = append(starts, backendtest.Start{At: t0, Cost: 1})
	d := decide(t, &st, lim, 0, 1, 0)
	for range 2 {
		driver.Refund(&st, &req, d, time.Nanosecond)
	}
	n := 0
	for range 5 {
		if d := decide(t, &st, lim, time.Second, 1, 0); d.Allowed {
			n++
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
		}
	}
	if n != 1 {
		t.Errorf("quota 2/h with one unit used and one refunded twice admitted %d more, want 1", n)
	}
	if err := backendtest.Check(userLimit(lim), starts); err != nil {
		t.Error(err)
	}
}

// TestQuotasSharingATick: two quotas whose windows differ in nanoseconds
// but round up to the same number of microseconds cannot be kept apart by
// a backend counting in microseconds, so the limit is invalid.
func TestQuotasSharingATick(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(1_000_000).WithBurst(10).WithQuota(2, 1500*time.Nanosecond).WithQuota(2, 1001*time.Nanosecond))
	wantLimitError(t, lim.String()+".Validate()", lim.Validate(), "Quotas[1].Window")
	req := driver.Request{Key: "k", Limit: lim, Cost: 1}
	var st driver.State
	_, err := driver.Decide(&st, &req, time.Microsecond, 0)
	wantLimitError(t, "Decide("+lim.String()+")", err, "Quotas[1].Window")
	if l := backendtest.Limit(bucket.PerSecond(1).WithQuota(2, 1000).WithQuota(2, 1001)); l.Validate() != nil {
		t.Errorf("%v.Validate() = %v, want nil: 1µs and 2µs", l, l.Validate())
	}
}

func TestQuotaRolling(t *testing.T) {
	const window = 100 * time.Second
	const slot = window / driver.QuotaSlots // 1s
	lim := backendtest.Limit(bucket.PerSecond(1_000_000).WithBurst(100).WithQuota(5, window))
	for _, off := range []time.Duration{0, 1, slot / 2, slot - 1, slot, 7*slot + 3} {
		var st driver.State
		for i := range 5 {
			if d := decide(t, &st, lim, off, 1, 0); !d.Allowed {
				t.Fatalf("unit %d of quota 5/100s at t0+%v refused", i+1, off)
			}
		}
		req := driver.Request{Key: "k", Limit: lim, Cost: 1}
		before := cloneState(&st)
		d := decide(t, &st, lim, off, 1, 0)
		if d.Allowed {
			t.Fatalf("unit 6 of quota 5/100s at t0+%v allowed", off)
		}
		// Released between W and W+w after their start, at the end of
		// their slot plus W.
		if d.Wait <= window || d.Wait > window+slot {
			t.Errorf("quota 5/100s full at t0+%v: retry-after %v, want in (%v, %v]", off, d.Wait, window, window+slot)
		}
		want := (off/slot+1)*slot + window - off
		if d.Wait != want {
			t.Errorf("quota 5/100s full at t0+%v: retry-after %v, want %v (the end of the slot plus the window)", off, d.Wait, want)
		}
		checkRetryAfter(t, before, req, time.Nanosecond, t0+int64(off), d)
	}

	// A window that is no multiple of QuotaSlots: w = ceil(1001ns/100) = 11ns.
	lim = backendtest.Limit(bucket.Every(time.Nanosecond, 1).WithBurst(10).WithQuota(1, 1001))
	var st driver.State
	for _, off := range []time.Duration{0, 5, 10, 11} {
		st = driver.State{}
		decide(t, &st, lim, off, 1, 0)
		d := decide(t, &st, lim, off, 1, 0)
		w := driver.SlotWidth(1001)
		want := time.Duration((int64(off)+t0)/w+1)*time.Duration(w) + 1001 - time.Duration(t0) - off
		if d.Allowed || d.Wait != want || d.Wait <= 1001 || d.Wait > 1001+time.Duration(w) {
			t.Errorf("quota 1/1001ns used at t0+%v: %s, want %s within (1001ns, 1012ns]", off, outcome(d.Allowed, d.Wait), outcome(false, want))
		}
	}

	// A rolling window: units leave one slot at a time, not all at once.
	lim = backendtest.Limit(bucket.PerSecond(1_000_000).WithBurst(100).WithQuota(10, window))
	st = driver.State{}
	for i := range 10 {
		decide(t, &st, lim, time.Duration(i)*10*time.Second, 1, 0)
	}
	run(t, &st, lim, []step{
		{window, 1, 0, false, slot},
		{window + slot, 1, 0, true, 0},
		{window + slot, 1, 0, false, 10 * time.Second},
		{window + 11*slot, 1, 0, true, 0},
		{window + 11*slot, 1, 0, false, 10 * time.Second},
	})
}

func TestDecideQuotasNeverOverAdmit(t *testing.T) {
	limits := []driver.Limit{
		backendtest.Limit(bucket.PerSecond(100).WithBurst(10).WithQuota(30, time.Second)),
		backendtest.Limit(bucket.PerSecond(1000).WithBurst(50).WithQuota(40, 100*time.Millisecond).WithQuota(90, 300*time.Millisecond)),
		backendtest.Limit(bucket.PerSecond(7).WithBurst(3).WithQuota(5, 1001*time.Millisecond).WithQuota(8, 3*time.Second).WithQuota(9, 4*time.Second)),
		backendtest.Limit(bucket.Every(time.Nanosecond, 1).WithBurst(5).WithQuota(3, 150).WithQuota(30, 1999)),
	}
	for _, unit := range []time.Duration{time.Nanosecond, time.Microsecond} {
		for i, lim := range limits {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(unit)))
			var st driver.State
			var starts []backendtest.Start
			interval := max(lim.Interval(), unit)
			now := t0 / int64(unit)
			for range 5000 {
				now += rng.Int64N(int64(3*interval/unit) + 1)
				req := driver.Request{Key: "k", Limit: lim, Cost: 1 + rng.Int64N(2), MaxWait: time.Duration(rng.Int64N(int64(5 * interval)))}
				d, err := driver.Decide(&st, &req, unit, now)
				if err != nil {
					t.Fatal(err)
				}
				if d.Allowed {
					starts = append(starts, backendtest.Start{At: d.Start(), Cost: req.Cost})
				}
			}
			if err := backendtest.Check(userLimit(lim), starts); err != nil {
				t.Errorf("%v at %v: %v", lim, unit, err)
			}
			if len(starts) < 40 {
				t.Errorf("%v at %v: only %d admissions in 5000 requests: the test exercises too little", lim, unit, len(starts))
			}
		}
	}
}

func TestRefusalChargesNothing(t *testing.T) {
	// A quota refusal charges no rate.
	withQuota := backendtest.Limit(bucket.PerHour(1).WithBurst(10).WithQuota(3, time.Hour))
	var st driver.State
	for range 3 {
		decide(t, &st, withQuota, 0, 1, 0)
	}
	before := cloneState(&st)
	for range 5 {
		if d := decide(t, &st, withQuota, 0, 1, time.Minute); d.Allowed {
			t.Fatal("unit 4 of quota 3/h allowed")
		}
	}
	if !reflect.DeepEqual(&st, before) {
		t.Errorf("quota refusals changed the state from %+v to %+v", before, &st)
	}
	n := 0
	for range 20 {
		if decide(t, &st, backendtest.Limit(bucket.PerHour(1).WithBurst(10)), 0, 1, 0).Allowed {
			n++
		}
	}
	if n != 7 {
		t.Errorf("after 3 admitted and 5 refused by quota, burst 10 admitted %d more, want 7", n)
	}

	// A rate refusal charges no quota.
	st = driver.State{}
	narrow := backendtest.Limit(bucket.PerHour(1).WithBurst(2).WithQuota(5, time.Hour))
	for range 2 {
		decide(t, &st, narrow, 0, 1, 0)
	}
	before = cloneState(&st)
	for range 8 {
		if decide(t, &st, narrow, 0, 1, time.Minute).Allowed {
			t.Fatal("unit 3 of burst 2 allowed")
		}
	}
	if !reflect.DeepEqual(&st, before) {
		t.Errorf("rate refusals changed the state from %+v to %+v", before, &st)
	}
	n = 0
	for range 10 {
		if decide(t, &st, backendtest.Limit(bucket.PerHour(1).WithBurst(10).WithQuota(5, time.Hour)), 0, 1, 0).Allowed {
			n++
		}
	}
	if n != 3 {
		t.Errorf("after 2 admitted and 8 refused by rate, quota 5 admitted %d more, want 3", n)
	}
}

func TestDecideLimitChanges(t *testing.T) {
	open := bucket.PerSecond(1000).WithBurst(100)
	count := func(st *driver.State, lim bucket.Limit, tries int) int {
		t.Helper()
		n := 0
		for range tries {
			if decide(t, st, backendtest.Limit(lim), 0, 1, 0).Allowed {
				n++
			}
		}
		return n
	}
	var st driver.State
	count(&st, open, 3)
	hour := open.WithQuota(3, time.Hour)
	if n := count(&st, hour, 5); n != 3 {
		t.Errorf("a quota 3/h added after 3 admissions admitted %d, want 3 (it starts empty)", n)
	}
	if n := count(&st, open, 1); n != 1 || len(st.Quotas) != 0 {
		t.Errorf("quota removed: admitted %d of 1 with %d quota states, want 1 with none", n, len(st.Quotas))
	}
	if n := count(&st, hour, 5); n != 3 {
		t.Errorf("quota 3/h removed and added back admitted %d, want 3 (its old state dropped)", n)
	}
	twoHours := open.WithQuota(3, 2*time.Hour)
	if n := count(&st, twoHours, 5); n != 3 || st.Quotas[0].Window != int64(2*time.Hour) {
		t.Errorf("window changed to 2h: admitted %d, state window %v, want 3 and 2h", n, time.Duration(st.Quotas[0].Window))
	}
	if n := count(&st, open.WithQuota(5, 2*time.Hour), 5); n != 2 {
		t.Errorf("quota 3/2h raised to 5/2h after 3 admitted %d more, want 2", n)
	}
	if n := count(&st, open.WithQuota(4, 2*time.Hour), 5); n != 0 {
		t.Errorf("quota lowered to 4/2h after 5 admitted %d more, want 0", n)
	}

	// Quotas are matched by window, whatever their order.
	st = driver.State{}
	ab := open.WithQuota(2, time.Hour).WithQuota(50, 24*time.Hour)
	ba := open.WithQuota(50, 24*time.Hour).WithQuota(2, time.Hour)
	count(&st, ab, 2)
	if n := count(&st, ba, 3); n != 0 {
		t.Errorf("quotas reordered after 2/h was used up: admitted %d, want 0", n)
	}
	if n := count(&st, ba.WithQuota(1, time.Minute), 3); n != 0 {
		t.Errorf("a third quota added while 2/h is used up: admitted %d, want 0", n)
	}

	// The rate changes at the next admission.
	st = driver.State{}
	if n := count(&st, bucket.PerHour(1), 3); n != 1 {
		t.Errorf("burst 1 admitted %d, want 1", n)
	}
	if n := count(&st, bucket.PerHour(1).WithBurst(3), 5); n != 2 {
		t.Errorf("burst raised from 1 to 3 admitted %d more, want 2", n)
	}
}

func TestDecideMicroseconds(t *testing.T) {
	const us = time.Microsecond
	lim := backendtest.Limit(bucket.PerSecond(3)) // 333333.33µs, rounded up to 333334µs
	req := driver.Request{Key: "k", Limit: lim, Cost: 1, MaxWait: time.Second}
	var st driver.State
	var starts []backendtest.Start
	now := t0 / int64(us)
	for k := range 6 {
		d, err := driver.Decide(&st, &req, us, now)
		if err != nil {
			t.Fatal(err)
		}
		want := time.Duration(k) * 333334 * us
		if k == 3 { // beyond the maxWait of 1s
			want = 1000002 * us
			if d.Allowed || d.Wait != want {
				t.Errorf("booking %d of 3/s at µs = %s, want %s", k, outcome(d.Allowed, d.Wait), outcome(false, want))
			}
			req.MaxWait = 2 * time.Second
			continue
		}
		if k > 3 {
			want = time.Duration(k-1) * 333334 * us
		}
		if !d.Allowed || d.Wait != want || d.Now != now*int64(us) {
			t.Errorf("booking %d of 3/s at µs = %s (Now %d), want %s (Now %d)", k, outcome(d.Allowed, d.Wait), d.Now, outcome(true, want), now*int64(us))
		}
		starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
	if err := backendtest.Check(userLimit(lim), starts); err != nil {
		t.Error(err)
	}

	// A maxWait is floored to whole ticks: 1999ns is 1µs.
	st = driver.State{}
	lim = backendtest.Limit(bucket.Every(2*us, 1))
	req = driver.Request{Key: "k", Limit: lim, Cost: 1, MaxWait: 1999}
	driver.Decide(&st, &req, us, 0)
	if d, _ := driver.Decide(&st, &req, us, 0); d.Allowed || d.Wait != 2*us {
		t.Errorf("2µs interval, maxWait 1999ns at µs: %s, want %s", outcome(d.Allowed, d.Wait), outcome(false, 2*us))
	}

	// Periods and windows that are not whole microseconds round up.
	st = driver.State{}
	lim = backendtest.Limit(bucket.Every(1500*time.Nanosecond, 1).WithQuota(1, 2500*time.Nanosecond))
	req = driver.Request{Key: "k", Limit: lim, Cost: 1, MaxWait: time.Hour}
	starts = starts[:0]
	for range 5 {
		d, err := driver.Decide(&st, &req, us, 10)
		if err != nil || !d.Allowed {
			t.Fatalf("Decide(%v) at µs: %v, %v", lim, d, err)
		}
		starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
	}
	if err := backendtest.Check(userLimit(lim), starts); err != nil {
		t.Errorf("%v at µs: %v", lim, err)
	}
	for i := 1; i < len(starts); i++ {
		if gap := time.Duration(starts[i].At - starts[i-1].At); gap != 4*us {
			t.Errorf("%v at µs: bookings %v apart, want 4µs (the end of a unit's 1µs slot plus the window of 3µs)", lim, gap)
		}
	}
}

// TestDecideHugeLimitsNeverOverAdmit: limits at the edge of validity,
// where burst × interval is close to MaxDuration and the interval is not a
// whole number of ticks.
func TestDecideHugeLimitsNeverOverAdmit(t *testing.T) {
	maxBurst := func(period time.Duration, rate int64) int64 {
		return int64(driver.MaxDuration) / int64(period) * rate
	}
	tests := []struct {
		name string
		lim  driver.Limit
		unit time.Duration
		cost []int64 // each booked at the earliest, from the same now
	}{
		{"7 per MaxDuration, burst 7", backendtest.Limit(bucket.Every(driver.MaxDuration, 7).WithBurst(7)), time.Nanosecond, []int64{7, 1}},
		{"3 per 2ns, burst 1.5×MaxDuration", backendtest.Limit(bucket.Every(2, 3).WithBurst(maxBurst(2, 3))), time.Nanosecond, []int64{maxBurst(2, 3), 1}},
		{"1 per ns, burst MaxDuration, at µs", backendtest.Limit(bucket.Every(1, 1).WithBurst(maxBurst(1, 1))), time.Microsecond, []int64{maxBurst(1, 1), 1}},
		{"1 per s, burst MaxDuration/s", backendtest.Limit(bucket.PerSecond(1).WithBurst(maxBurst(time.Second, 1))), time.Nanosecond, []int64{maxBurst(time.Second, 1), 1}},
		{"1 per s, burst MaxDuration/s, at µs", backendtest.Limit(bucket.PerSecond(1).WithBurst(maxBurst(time.Second, 1))), time.Microsecond, []int64{maxBurst(time.Second, 1), 1}},
		// Used + cost passes MaxInt64 (found by FuzzDecide).
		{"quota MaxInt64/s", backendtest.Limit(bucket.Every(1, 1_000_000_000).WithBurst(math.MaxInt64).WithQuota(math.MaxInt64, time.Second)), time.Nanosecond, []int64{math.MaxInt64, 1}},
	}
	for _, tt := range tests {
		if err := tt.lim.Validate(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var st driver.State
		var starts []backendtest.Start
		now := t0 / int64(tt.unit)
		for _, c := range tt.cost {
			req := driver.Request{Key: "k", Limit: tt.lim, Cost: c, MaxWait: driver.MaxDuration}
			d, err := driver.Decide(&st, &req, tt.unit, now)
			if err != nil {
				t.Fatalf("%s: Decide(cost %d): %v", tt.name, c, err)
			}
			if d.Allowed {
				starts = append(starts, backendtest.Start{At: d.Start(), Cost: c})
			}
		}
		if err := backendtest.Check(userLimit(tt.lim), starts); err != nil {
			t.Errorf("%s: %v (starts at t0+%v)", tt.name, err, startOffsets(starts))
		}
	}
}

func startOffsets(starts []backendtest.Start) []time.Duration {
	var ds []time.Duration
	for _, s := range starts {
		ds = append(ds, time.Duration(s.At-t0))
	}
	return ds
}

func TestFreshAt(t *testing.T) {
	if got := driver.FreshAt(&driver.State{}); got != 0 {
		t.Errorf("FreshAt(zero State) = %d, want 0", got)
	}
	var st driver.State
	driver.Pause(&st, t0+int64(time.Hour))
	if got := driver.FreshAt(&st); got < t0+int64(time.Hour) {
		t.Errorf("FreshAt after Pause(t0+1h) = t0+%v, want at least t0+1h", time.Duration(got-t0))
	}
	st = driver.State{}
	d := decide(t, &st, backendtest.Limit(bucket.PerSecond(1).WithBurst(10).WithQuota(5, time.Hour)), 0, 3, 0)
	if got := driver.FreshAt(&st); got < d.Start()+int64(time.Hour) {
		t.Errorf("FreshAt after a quota 5/h admission at t0 = t0+%v, want at least t0+1h", time.Duration(got-t0))
	}

	// After FreshAt, a state decides exactly as a zero State would.
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		unit := time.Nanosecond
		if seed%3 == 0 {
			unit = time.Microsecond
		}
		lim := randomLimit(rng)
		var st driver.State
		now := t0 / int64(unit)
		span := int64(lim.Interval())*lim.Burst/int64(unit) + 2
		for range rng.IntN(30) {
			now += rng.Int64N(span)
			req := driver.Request{Key: "k", Limit: lim, Cost: 1 + rng.Int64N(min(lim.Burst, 3)), MaxWait: time.Duration(rng.Int64N(int64(lim.Interval()) * 3))}
			if rng.IntN(10) == 0 {
				driver.Pause(&st, now+rng.Int64N(span))
				continue
			}
			d, err := driver.Decide(&st, &req, unit, now)
			if err != nil {
				t.Fatal(err)
			}
			if rng.IntN(5) == 0 {
				driver.Refund(&st, &req, d, unit)
			}
		}
		fresh := max(driver.FreshAt(&st), now)
		var zero driver.State
		later := lim
		if rng.IntN(4) == 0 {
			later = randomLimit(rng) // the limit may change too
		}
		at := fresh
		for i := range 20 {
			req := driver.Request{Key: "k", Limit: later, Cost: 1 + rng.Int64N(min(later.Burst, 3)), MaxWait: time.Duration(rng.Int64N(int64(later.Interval()) * 3))}
			d1, err1 := driver.Decide(&st, &req, unit, at)
			d2, err2 := driver.Decide(&zero, &req, unit, at)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if d1.Allowed != d2.Allowed || d1.Wait != d2.Wait || d1.Booking.TAT != d2.Booking.TAT {
				t.Fatalf("seed %d: %v, then %v from FreshAt on at %v: decision %d = %s (TAT %d), a zero State's = %s (TAT %d)",
					seed, lim, later, unit, i, outcome(d1.Allowed, d1.Wait), d1.Booking.TAT, outcome(d2.Allowed, d2.Wait), d2.Booking.TAT)
			}
			at += rng.Int64N(int64(later.Interval())/int64(unit) + 1)
		}
	}
}

// randomLimit returns a small valid limit, with up to two quotas.
func randomLimit(rng *rand.Rand) driver.Limit {
	periods := []time.Duration{time.Microsecond, 1500 * time.Nanosecond, time.Millisecond, 7 * time.Millisecond, time.Second}
	lim := bucket.Every(periods[rng.IntN(len(periods))], 1+rng.Int64N(5)).WithBurst(1 + rng.Int64N(5))
	for i := range rng.IntN(3) {
		w := time.Duration(i+1) * lim.Period * time.Duration(1+rng.IntN(20))
		if l := lim.WithQuota(1+rng.Int64N(10)+lim.Burst, w+time.Duration(rng.IntN(1000))); l.Validate() == nil {
			lim = l
		}
	}
	return backendtest.Limit(lim)
}

func TestDecideErrors(t *testing.T) {
	lim := backendtest.Limit(bucket.PerSecond(10).WithBurst(5).WithQuota(3, time.Hour))
	tests := []struct {
		name  string
		req   driver.Request
		want  error
		field string // for a *LimitError
		bound string // for a *CostError
	}{
		{"empty key", driver.Request{Key: "", Limit: lim, Cost: 1}, driver.ErrEmptyKey, "", ""},
		{"cost 0", driver.Request{Key: "k", Limit: lim, Cost: 0}, driver.ErrInvalidCost, "", ""},
		{"cost -1", driver.Request{Key: "k", Limit: lim, Cost: -1}, driver.ErrInvalidCost, "", ""},
		{"cost MinInt64", driver.Request{Key: "k", Limit: lim, Cost: math.MinInt64}, driver.ErrInvalidCost, "", ""},
		{"cost above burst", driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1).WithBurst(5)), Cost: 6, MaxWait: time.Hour}, driver.ErrImpossible, "", "burst"},
		{"cost MaxInt64", driver.Request{Key: "k", Limit: lim, Cost: math.MaxInt64, MaxWait: time.Hour}, driver.ErrImpossible, "", "burst"},
		{"cost above quota", driver.Request{Key: "k", Limit: lim, Cost: 4, MaxWait: time.Hour}, driver.ErrImpossible, "", "quota 3/h"},
		{"invalid limit", driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(0)), Cost: 1}, driver.ErrInvalidLimit, "Rate", ""},
		{"invalid quota", driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(1).WithQuota(1, 0)), Cost: 1}, driver.ErrInvalidLimit, "Quotas[0].Window", ""},
	}
	var st driver.State
	decide(t, &st, lim, 0, 1, 0)
	before := cloneState(&st)
	for _, tt := range tests {
		d, err := driver.Decide(&st, &tt.req, time.Nanosecond, t0)
		if !errors.Is(err, tt.want) || d.Allowed {
			t.Errorf("%s: Decide = %+v, %v; want an error matching %v", tt.name, d, err, tt.want)
			continue
		}
		if tt.field != "" {
			wantLimitError(t, tt.name, err, tt.field)
		}
		if tt.bound != "" {
			var ce *driver.CostError
			if !errors.As(err, &ce) || ce.Bound != tt.bound || ce.Cost != tt.req.Cost {
				t.Errorf("%s: Decide error %v, want a *CostError for cost %d and bound %q", tt.name, err, tt.req.Cost, tt.bound)
			}
		}
		if !reflect.DeepEqual(&st, before) {
			t.Errorf("%s: a failed Decide changed the state from %+v to %+v", tt.name, before, &st)
		}
	}
}

func TestDecideAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("long warm-up")
	}
	tests := []struct {
		name string
		lim  driver.Limit
		cost int64
	}{
		{"no quotas, admitted", backendtest.Limit(bucket.PerSecond(1000).WithBurst(10)), 1},
		{"no quotas, refused", backendtest.Limit(bucket.PerSecond(1).WithBurst(10)), 5},
		{"quotas", backendtest.Limit(bucket.PerSecond(1000).WithBurst(10).WithQuota(100, time.Second).WithQuota(1_000_000, time.Hour)), 1},
	}
	for _, tt := range tests {
		var st driver.State
		req := driver.Request{Key: "k", Limit: tt.lim, Cost: tt.cost}
		now := t0
		decideNext := func() {
			now += int64(100 * time.Millisecond)
			if _, err := driver.Decide(&st, &req, time.Nanosecond, now); err != nil {
				t.Fatal(err)
			}
		}
		for range 40_000 { // over an hour: every quota has filled its slots
			decideNext()
		}
		if n := testing.AllocsPerRun(1000, decideNext); n != 0 {
			t.Errorf("%s: Decide on an existing state allocates %v times per call, want 0", tt.name, n)
		}
	}
}

// TestUnbook: the refunds Unbook returns for consecutive admissions of a
// key, made in order, give every one of them back: the state is as it was
// before the first, quota slots included (a refund adds to the
// generation). Admissions before one that is not given back stay charged.
func TestUnbook(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lim     driver.Limit
		refunds int // how many refunds Unbook returns for three admissions
	}{
		{"rate", backendtest.Limit(bucket.PerSecond(10).WithBurst(5)), 1},
		{"quotas", backendtest.Limit(bucket.PerSecond(10).WithBurst(5).WithQuota(4, time.Hour)), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admit := func(st *driver.State, key string) driver.Admission {
				t.Helper()
				req := driver.Request{Key: key, Limit: tc.lim, Cost: 1}
				d, err := driver.Decide(st, &req, time.Nanosecond, t0)
				if err != nil || !d.Allowed {
					t.Fatalf("Decide = %+v, %v", d, err)
				}
				return driver.Admission{Request: req, Decision: d}
			}
			refund := func(st *driver.State, as []driver.Admission) {
				for _, a := range as {
					driver.Refund(st, &a.Request, a.Decision, time.Nanosecond)
				}
			}

			var st driver.State
			before := admit(&st, "k") // stays charged
			want := cloneState(&st)
			a1, a2, a3 := admit(&st, "k"), admit(&st, "k"), admit(&st, "k")
			give := driver.Unbook([]driver.Admission{a3, a2, a1})
			if len(give) != tc.refunds {
				t.Fatalf("Unbook of three consecutive admissions: %d refunds, want %d", len(give), tc.refunds)
			}
			refund(&st, give)
			if st.TAT != want.TAT || !reflect.DeepEqual(st.Quotas, want.Quotas) {
				t.Errorf("after the refunds the state is %+v, want %+v as before the three", st, *want)
			}

			// Latest first, the admissions stop at one not given back:
			// before, with another admission between, stays charged.
			admit(&st, "k")
			a4 := admit(&st, "k")
			give = driver.Unbook([]driver.Admission{a4, before})
			if len(give) != 1 || give[0].Decision.Booking != a4.Decision.Booking {
				t.Errorf("Unbook across a gap = %+v, want a4's refund alone", give)
			}
			if driver.Unbook(nil) != nil {
				t.Error("Unbook(nil) is not nil")
			}
		})
	}
}

func wantLimitError(t *testing.T, what string, err error, field string) {
	t.Helper()
	if !errors.Is(err, driver.ErrInvalidLimit) {
		t.Errorf("%s = %v, want an error matching ErrInvalidLimit", what, err)
		return
	}
	var le *driver.LimitError
	if !errors.As(err, &le) {
		t.Errorf("%s = %v (%T), want a *driver.LimitError", what, err, err)
		return
	}
	if le.Field != field {
		t.Errorf("%s names field %q (%v), want %q", what, le.Field, err, field)
	}
}
