// Package backendtest is the conformance suite every driver.Backend runs,
// and the reference checker that judges admitted start times against a
// limit. Third-party backends run it from their own tests:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, backendtest.Config{New: newMyBackend})
//	}
package backendtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Config describes the backend under test.
type Config struct {
	// New returns a backend for one subtest; register its cleanup with
	// t.Cleanup. Backends may share storage across subtests: every
	// subtest uses keys of its own.
	New func(t *testing.T) driver.Backend
	// Peer, if set, returns a second handle on b's storage (another
	// connection, another *sql.DB, another client), so that the suite can
	// check that handles share state as processes or hosts would. By
	// default the suite uses b itself.
	Peer func(t *testing.T, b driver.Backend) driver.Backend
	// Forgotten, if set, reports whether b holds no state for key, after
	// running whatever expiry the backend needs (a sweep). The suite then
	// checks guarantee 8: idle keys are forgotten, busy ones kept.
	Forgotten func(t *testing.T, b driver.Backend, key string) bool
}

// Run runs the conformance suite: validation, burst and rate, atomic
// refusal, booking ahead, rate and quotas under concurrency on one key and
// on many, pause, refund, limits changing at runtime, keys of any bytes,
// batches, and idle expiry.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	if cfg.New == nil {
		t.Fatal("backendtest: Config.New is nil")
	}
	s := &suite{cfg: cfg, prefix: fmt.Sprintf("bt%d:", rand.Uint32())}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"Validation", s.testValidation},
		{"Burst", s.testBurst},
		{"RefusalChargesNothing", s.testRefusalChargesNothing},
		{"Booking", s.testBooking},
		{"ConcurrentOneKey", s.testConcurrentOneKey},
		{"ConcurrentQuotas", s.testConcurrentQuotas},
		{"ConcurrentManyKeys", s.testConcurrentManyKeys},
		{"Pause", s.testPause},
		{"Refund", s.testRefund},
		{"RefundJoined", s.testRefundJoined},
		{"LimitChange", s.testLimitChange},
		{"KeysOfAnyBytes", s.testKeys},
		{"Batch", s.testBatch},
		{"IdleExpiry", s.testIdleExpiry},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.fn)
	}
}

type suite struct {
	cfg    Config
	prefix string
}

func (s *suite) key(t *testing.T, name string) string {
	return s.prefix + t.Name() + ":" + name
}

func (s *suite) peer(t *testing.T, b driver.Backend) driver.Backend {
	if s.cfg.Peer == nil {
		return b
	}
	return s.cfg.Peer(t, b)
}

// admit calls b.Admit and fails the test on an error or on an admission
// booked beyond MaxWait.
func admit(t *testing.T, b driver.Backend, req driver.Request) driver.Decision {
	t.Helper()
	d, err := b.Admit(context.Background(), req)
	if err != nil {
		t.Fatalf("Admit(%q, %v, cost %d, maxWait %v): %v", req.Key, req.Limit, req.Cost, req.MaxWait, err)
	}
	checkDecision(t, req, d)
	return d
}

func checkDecision(t *testing.T, req driver.Request, d driver.Decision) {
	t.Helper()
	if d.Allowed && (d.Wait < 0 || d.Wait > max(req.MaxWait, 0)) {
		t.Fatalf("Admit(%q, maxWait %v) booked %v ahead, want within [0, %v]", req.Key, req.MaxWait, d.Wait, req.MaxWait)
	}
	if !d.Allowed && d.Wait <= max(req.MaxWait, 0) {
		t.Fatalf("Admit(%q, maxWait %v) refused with retry-after %v, want more than maxWait", req.Key, req.MaxWait, d.Wait)
	}
}

func req(key string, lim bucket.Limit, cost int64, maxWait time.Duration) driver.Request {
	return driver.Request{Key: key, Limit: Limit(lim), Cost: cost, MaxWait: maxWait}
}

func (s *suite) testValidation(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	ok := bucket.PerSecond(10).WithBurst(5).WithQuota(100, time.Hour)
	tests := []struct {
		name  string
		req   driver.Request
		want  error
		field string
	}{
		{"empty key", req("", ok, 1, 0), bucket.ErrEmptyKey, ""},
		{"cost 0", req(key, ok, 0, 0), bucket.ErrInvalidCost, ""},
		{"cost -1", req(key, ok, -1, 0), bucket.ErrInvalidCost, ""},
		{"cost above burst", req(key, ok, 6, time.Hour), bucket.ErrImpossible, ""},
		{"huge cost", req(key, ok, math.MaxInt64, time.Hour), bucket.ErrImpossible, ""},
		{"cost above quota", req(key, bucket.PerSecond(10).WithBurst(50).WithQuota(20, time.Hour), 21, time.Hour), bucket.ErrImpossible, ""},
		{"zero limit", req(key, bucket.Limit{}, 1, 0), bucket.ErrInvalidLimit, "Rate"},
		{"rate 0", req(key, bucket.Limit{Rate: 0, Period: time.Second, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Rate"},
		{"negative rate", req(key, bucket.Limit{Rate: -5, Period: time.Second, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Rate"},
		{"period 0", req(key, bucket.Limit{Rate: 1, Period: 0, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Period"},
		{"negative period", req(key, bucket.Limit{Rate: 1, Period: -time.Second, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Period"},
		{"overflowing period", req(key, bucket.Limit{Rate: 1, Period: math.MaxInt64, Burst: 1}, 1, 0), bucket.ErrInvalidLimit, "Period"},
		{"burst 0", req(key, bucket.Limit{Rate: 1, Period: time.Second}, 1, 0), bucket.ErrInvalidLimit, "Burst"},
		{"overflowing burst", req(key, bucket.PerSecond(1).WithBurst(math.MaxInt64), 1, 0), bucket.ErrInvalidLimit, "Burst"},
		{"quota max 0", req(key, bucket.PerSecond(1).WithQuota(0, time.Hour), 1, 0), bucket.ErrInvalidLimit, "Quotas[0].Max"},
		{"quota window 0", req(key, bucket.PerSecond(1).WithQuota(5, 0), 1, 0), bucket.ErrInvalidLimit, "Quotas[0].Window"},
		{"overflowing window", req(key, bucket.PerSecond(1).WithQuota(5, math.MaxInt64), 1, 0), bucket.ErrInvalidLimit, "Quotas[0].Window"},
		{"repeated window", req(key, bucket.PerSecond(1).WithQuota(5, time.Hour).WithQuota(6, time.Hour), 1, 0), bucket.ErrInvalidLimit, "Quotas[1].Window"},
	}
	for _, tt := range tests {
		_, err := b.Admit(context.Background(), tt.req)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: Admit error = %v, want %v", tt.name, err, tt.want)
			continue
		}
		var le *bucket.LimitError
		if tt.field != "" && (!errors.As(err, &le) || le.Field != tt.field) {
			t.Errorf("%s: Admit error = %v, want a *bucket.LimitError naming %s", tt.name, err, tt.field)
		}
	}
	// Nothing above charged the key: its whole burst is still there.
	for i := range 5 {
		if d := admit(t, b, req(key, ok, 1, 0)); !d.Allowed {
			t.Fatalf("after invalid requests, admission %d of burst 5 refused", i+1)
		}
	}
}

func (s *suite) testBurst(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerHour(1).WithBurst(5)
	for i := range 5 {
		d := admit(t, b, req(key, lim, 1, 0))
		if !d.Allowed || d.Wait != 0 {
			t.Fatalf("admission %d of burst 5 = %v after %v, want allowed at once", i+1, d.Allowed, d.Wait)
		}
	}
	d := admit(t, b, req(key, lim, 1, 0))
	if d.Allowed {
		t.Fatal("admission 6 of burst 5 allowed, want refused")
	}
	if d.Wait <= 0 || d.Wait > time.Hour {
		t.Errorf("refusal after burst: retry-after %v, want in (0, 1h]", d.Wait)
	}
}

func (s *suite) testRefusalChargesNothing(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "quota-refusal")
	withQuota := bucket.PerHour(1).WithBurst(10).WithQuota(3, time.Hour)
	for i := range 3 {
		if !admit(t, b, req(key, withQuota, 1, 0)).Allowed {
			t.Fatalf("admission %d of quota 3 refused", i+1)
		}
	}
	for range 5 {
		if admit(t, b, req(key, withQuota, 1, 0)).Allowed {
			t.Fatal("admission 4 of quota 3 allowed")
		}
	}
	// The quota refusals charged no rate: 7 of the burst of 10 remain.
	noQuota := bucket.PerHour(1).WithBurst(10)
	if n := countAllowed(t, b, key, noQuota, 20); n != 7 {
		t.Errorf("after 3 admitted and 5 refused by quota, burst 10 admitted %d more, want 7", n)
	}

	key = s.key(t, "rate-refusal")
	narrow := bucket.PerHour(1).WithBurst(2).WithQuota(5, time.Hour)
	if n := countAllowed(t, b, key, narrow, 10); n != 2 {
		t.Fatalf("burst 2 admitted %d, want 2", n)
	}
	// The 8 rate refusals charged no quota: 3 of the quota of 5 remain.
	wide := bucket.PerHour(1).WithBurst(10).WithQuota(5, time.Hour)
	if n := countAllowed(t, b, key, wide, 10); n != 3 {
		t.Errorf("after 2 admitted and 8 refused by rate, quota 5 admitted %d more, want 3", n)
	}
}

func countAllowed(t *testing.T, b driver.Backend, key string, lim bucket.Limit, tries int) int {
	t.Helper()
	n := 0
	for range tries {
		if admit(t, b, req(key, lim, 1, 0)).Allowed {
			n++
		}
	}
	return n
}

func (s *suite) testBooking(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerSecond(1) // T = 1s: generous against slow machines
	d1 := admit(t, b, req(key, lim, 1, 0))
	if !d1.Allowed || d1.Wait != 0 {
		t.Fatalf("first admission = %v after %v, want allowed at once", d1.Allowed, d1.Wait)
	}
	if d := admit(t, b, req(key, lim, 1, 0)); d.Allowed {
		t.Fatal("second admission with maxWait 0 allowed, want refused")
	}
	d3 := admit(t, b, req(key, lim, 1, 5*time.Second))
	if !d3.Allowed || d3.Start() != d1.Start()+int64(time.Second) {
		t.Fatalf("booked admission = %v starting at first+%v, want allowed at first+1s", d3.Allowed, time.Duration(d3.Start()-d1.Start()))
	}
	// The next slot is first+2s; a maxWait that cannot reach it is refused
	// rather than booked further ahead than asked.
	if d := admit(t, b, req(key, lim, 1, 500*time.Millisecond)); d.Allowed {
		t.Errorf("admission with maxWait 500ms allowed %v ahead, want refused", d.Wait)
	}
	// Negative maxWait means now or never.
	if d := admit(t, b, req(key, lim, 1, -time.Hour)); d.Allowed {
		t.Error("admission with negative maxWait allowed, want refused")
	}
}

// hammer runs workers goroutines that admit random costs for every key
// with random maxWaits until the backend's clock has advanced by span (or
// each has made maxTries attempts), and returns the admitted starts by key.
func (s *suite) hammer(t *testing.T, b driver.Backend, keys []string, lim bucket.Limit, workers int, span time.Duration, maxCost int64, maxWait time.Duration) map[string][]Start {
	t.Helper()
	peer := s.peer(t, b)
	var (
		mu     sync.Mutex
		starts = make(map[string][]Start)
		wg     sync.WaitGroup
		errs   = make(chan error, workers)
	)
	clock := s.now(t, b)
	for w := range workers {
		be := b
		if w%2 == 1 {
			be = peer
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for n := range 200_000 {
				// Workers cycle through the keys from different places, so
				// that even a slow backend reaches every key.
				r := req(keys[(w*len(keys)/workers+n)%len(keys)], lim, 1+rng.Int64N(maxCost), 0)
				if maxWait > 0 && rng.IntN(2) == 0 {
					r.MaxWait = time.Duration(rng.Int64N(int64(maxWait)))
				}
				d, err := be.Admit(context.Background(), r)
				if err != nil {
					errs <- fmt.Errorf("Admit(%q): %w", r.Key, err)
					return
				}
				if d.Allowed && (d.Wait < 0 || d.Wait > max(r.MaxWait, 0)) {
					errs <- fmt.Errorf("Admit(%q, maxWait %v) booked %v ahead", r.Key, r.MaxWait, d.Wait)
					return
				}
				if d.Allowed {
					mu.Lock()
					starts[r.Key] = append(starts[r.Key], Start{At: d.Start(), Cost: r.Cost})
					mu.Unlock()
				}
				if d.Now-clock > int64(span) {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return starts
}

func (s *suite) testConcurrentOneKey(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerSecond(200).WithBurst(5)
	starts := s.hammer(t, b, []string{key}, lim, 16, 400*time.Millisecond, 3, 20*time.Millisecond)
	checkStarts(t, lim, key, starts[key], 20)
}

func (s *suite) testConcurrentQuotas(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerSecond(2000).WithBurst(10).WithQuota(40, 100*time.Millisecond).WithQuota(90, 300*time.Millisecond)
	starts := s.hammer(t, b, []string{key}, lim, 8, 500*time.Millisecond, 2, 10*time.Millisecond)
	checkStarts(t, lim, key, starts[key], 90)
}

func (s *suite) testConcurrentManyKeys(t *testing.T) {
	b := s.cfg.New(t)
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = s.key(t, fmt.Sprint("tenant-", i))
	}
	lim := bucket.PerSecond(100).WithBurst(2).WithQuota(15, 200*time.Millisecond)
	starts := s.hammer(t, b, keys, lim, 8, 400*time.Millisecond, 2, 10*time.Millisecond)
	for _, k := range keys {
		checkStarts(t, lim, k, starts[k], 2)
	}
}

func checkStarts(t *testing.T, lim bucket.Limit, key string, starts []Start, atLeast int64) {
	t.Helper()
	var units int64
	for _, s := range starts {
		units += s.Cost
	}
	if units < atLeast {
		t.Errorf("key %q: %d units admitted, want at least %d for a meaningful check", key, units, atLeast)
	}
	if err := Check(lim, starts); err != nil {
		t.Errorf("key %q: %v", key, err)
	}
}

// now reads the backend's clock through an admission of an unlimited-like
// limit on a scratch key.
func (s *suite) now(t *testing.T, b driver.Backend) int64 {
	t.Helper()
	return admit(t, b, req(s.key(t, "clock"), bucket.PerSecond(1_000_000_000).WithBurst(1_000_000_000), 1, 0)).Now
}

func (s *suite) testPause(t *testing.T) {
	b := s.cfg.New(t)
	peer := s.peer(t, b)
	key, other := s.key(t, "paused"), s.key(t, "other")
	lim := bucket.PerSecond(100).WithBurst(3)
	const pause = 300 * time.Millisecond

	before := s.now(t, b)
	if err := peer.Pause(context.Background(), key, pause); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	after := s.now(t, b)
	if err := b.Pause(context.Background(), key, time.Millisecond); err != nil {
		t.Fatalf("Pause: %v", err)
	}

	d := admit(t, b, req(key, lim, 1, 0))
	if d.Allowed {
		t.Fatal("admission during pause allowed")
	}
	if d.Start() < before+int64(pause) {
		t.Errorf("refusal during pause: admissible %v after the pause began, want at least %v", time.Duration(d.Start()-before), pause)
	}
	d = admit(t, b, req(key, lim, 1, 5*time.Second))
	if !d.Allowed {
		t.Fatal("admission with maxWait 5s during a 300ms pause refused")
	}
	if d.Start() < before+int64(pause) || d.Start() > after+int64(pause) {
		t.Errorf("booked start %v after the pause began, want %v (a shorter pause must not shorten it)", time.Duration(d.Start()-before), pause)
	}
	if d := admit(t, b, req(other, lim, 1, 0)); !d.Allowed || d.Wait != 0 {
		t.Error("another key was held up by the pause")
	}
	if err := b.Pause(context.Background(), "", time.Second); !errors.Is(err, bucket.ErrEmptyKey) {
		t.Errorf("Pause(\"\") = %v, want ErrEmptyKey", err)
	}
}

func (s *suite) testRefund(t *testing.T) {
	b := s.cfg.New(t)
	peer := s.peer(t, b)
	ctx := context.Background()
	key := s.key(t, "rate")
	lim := bucket.PerSecond(1)
	r := req(key, lim, 1, 10*time.Second)
	d1 := admit(t, b, r)
	d2 := admit(t, b, r)
	if err := peer.Refund(ctx, r, d2); err != nil {
		t.Fatalf("Refund: %v", err)
	}
	d3 := admit(t, b, r)
	if d3.Start() != d2.Start() {
		t.Fatalf("after refunding the last booking, next start = first+%v, want the refunded slot first+%v",
			time.Duration(d3.Start()-d1.Start()), time.Duration(d2.Start()-d1.Start()))
	}
	// d3 took d2's slot: refunding d2 again must not free it.
	if err := peer.Refund(ctx, r, d2); err != nil {
		t.Fatalf("Refund: %v", err)
	}
	d4 := admit(t, b, r)
	if d4.Start() != d3.Start()+int64(time.Second) {
		t.Fatalf("a second refund of a booking whose slot was taken again freed it: next start d3+%v, want d3+1s", time.Duration(d4.Start()-d3.Start()))
	}
	// d4 depends on d3: refunding d3 must not free its slot.
	for range 2 {
		if err := b.Refund(ctx, r, d3); err != nil {
			t.Fatalf("Refund: %v", err)
		}
	}
	if err := b.Refund(ctx, r, driver.Decision{}); err != nil {
		t.Fatalf("Refund of a refused decision: %v", err)
	}
	d5 := admit(t, b, r)
	if d5.Start() != d4.Start()+int64(time.Second) {
		t.Errorf("refunding a booking a later one depends on moved the next start to d4+%v, want d4+1s", time.Duration(d5.Start()-d4.Start()))
	}

	key = s.key(t, "quota")
	lim = bucket.PerSecond(1000).WithBurst(10).WithQuota(2, time.Hour)
	r = req(key, lim, 1, 0)
	admit(t, b, r)
	d := admit(t, b, r)
	if admit(t, b, r).Allowed {
		t.Fatal("third admission of quota 2 allowed")
	}
	for range 2 { // the second refund of the same admission does nothing
		if err := b.Refund(ctx, r, d); err != nil {
			t.Fatalf("Refund: %v", err)
		}
	}
	if !admit(t, b, r).Allowed {
		t.Error("after a quota refund, admission refused")
	}
	if admit(t, b, r).Allowed {
		t.Error("after a refund of one unit, two admitted")
	}
}

// testRefundJoined: a refund of consecutive admissions joined into one
// booking gives them all back; a booking joined across another process's
// admission is refused, so that it cannot give that one back too; refunds
// unwound one after the other give back quota units too.
func (s *suite) testRefundJoined(t *testing.T) {
	b := s.cfg.New(t)
	peer := s.peer(t, b)
	ctx := context.Background()
	r := req(s.key(t, "k"), bucket.PerSecond(1), 1, 10*time.Second)
	d1, d2, d3 := admit(t, b, r), admit(t, b, r), admit(t, b, r)
	joined, ok := d3.Booking.Join(d2.Booking)
	if !ok {
		t.Fatalf("Join of consecutive admissions %+v and %+v refused", d2.Booking, d3.Booking)
	}
	d := d3
	d.Booking = joined
	if err := peer.Refund(ctx, r, d); err != nil {
		t.Fatalf("Refund: %v", err)
	}
	if d4 := admit(t, b, r); d4.Start() != d2.Start() {
		t.Fatalf("after refunding the last two admissions, next start = first+%v, want the second's slot first+%v",
			time.Duration(d4.Start()-d1.Start()), time.Duration(d2.Start()-d1.Start()))
	}

	r = req(s.key(t, "between"), bucket.PerSecond(1), 1, 10*time.Second)
	e1 := admit(t, b, r)
	e2 := admit(t, peer, r)
	e3 := admit(t, b, r)
	if _, ok := e3.Booking.Join(e1.Booking); ok {
		t.Fatalf("Join across another admission (%+v, then %+v, then %+v) accepted", e1.Booking, e2.Booking, e3.Booking)
	}
	if _, ok := e3.Booking.Join(e2.Booking); !ok {
		t.Fatalf("Join of consecutive admissions of two processes %+v and %+v refused", e2.Booking, e3.Booking)
	}

	// Refunds unwound one after the other, latest first, give back quota
	// units too.
	r = req(s.key(t, "quota"), bucket.PerSecond(1000).WithBurst(10).WithQuota(3, time.Hour), 1, 0)
	q1, q2, q3 := admit(t, b, r), admit(t, b, r), admit(t, b, r)
	if admit(t, b, r).Allowed {
		t.Fatal("a fourth admission under a quota of 3 allowed")
	}
	u2, ok2 := q3.Booking.Unwound(q2.Booking)
	w2 := q2
	w2.Booking = u2
	u1, ok1 := u2.Unwound(q1.Booking)
	w1 := q1
	w1.Booking = u1
	if !ok1 || !ok2 {
		t.Fatalf("Unwound of consecutive admissions %+v, %+v, %+v refused", q1.Booking, q2.Booking, q3.Booking)
	}
	for _, d := range []driver.Decision{q3, w2, w1} {
		if err := peer.Refund(ctx, r, d); err != nil {
			t.Fatalf("Refund: %v", err)
		}
	}
	for i := range 3 {
		if !admit(t, b, r).Allowed {
			t.Fatalf("after three unwound refunds, admission %d of the quota of 3 refused", i+1)
		}
	}
	if admit(t, b, r).Allowed {
		t.Error("after three unwound refunds, four admitted under a quota of 3")
	}

	// An admission of another process between two unwound refunds makes
	// the second do nothing: it must not give that admission back.
	r = req(s.key(t, "unwound-between"), bucket.PerSecond(1), 1, 10*time.Second)
	p1, p2 := admit(t, b, r), admit(t, b, r)
	u, _ := p2.Booking.Unwound(p1.Booking)
	if err := b.Refund(ctx, r, p2); err != nil {
		t.Fatalf("Refund: %v", err)
	}
	p3 := admit(t, peer, r) // takes p2's slot again
	w := p1
	w.Booking = u
	if err := b.Refund(ctx, r, w); err != nil {
		t.Fatalf("Refund: %v", err)
	}
	if p4 := admit(t, b, r); p4.Start() != p3.Start()+int64(time.Second) {
		t.Errorf("an unwound refund after another process's admission gave back slots: next start p3%+v, want p3+1s", time.Duration(p4.Start()-p3.Start()))
	}
}

func (s *suite) testLimitChange(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	if n := countAllowed(t, b, key, bucket.PerHour(1), 3); n != 1 {
		t.Fatalf("burst 1 admitted %d, want 1", n)
	}
	if n := countAllowed(t, b, key, bucket.PerHour(1).WithBurst(3), 5); n != 2 {
		t.Errorf("raising burst 1 to 3 admitted %d more, want 2", n)
	}
	// Adding a quota starts it empty; shrinking it takes effect at once.
	lim := bucket.PerSecond(1000).WithBurst(100).WithQuota(5, time.Hour)
	key = s.key(t, "quota")
	if n := countAllowed(t, b, key, lim, 3); n != 3 {
		t.Fatalf("quota 5 admitted %d of 3, want 3", n)
	}
	lim = bucket.PerSecond(1000).WithBurst(100).WithQuota(4, time.Hour)
	if n := countAllowed(t, b, key, lim, 3); n != 1 {
		t.Errorf("quota lowered to 4 after 3 admitted %d more, want 1", n)
	}
}

func (s *suite) testKeys(t *testing.T) {
	b := s.cfg.New(t)
	base := s.key(t, "")
	keys := []string{
		"a", "a ", " a", "A", "{a}", "a}", "{a", "}{", "a\x00b", "a\x00", "a\nb", "a\r\nb",
		"\xff\xfe", "ключ", "🔑", `a"b`, "a'b", "a\\b", "a:b", "a::b", "%s", "*", "?",
		strings.Repeat("k", 1024), strings.Repeat("k", 1023) + "j",
	}
	lim := bucket.PerHour(1)
	for _, k := range keys {
		if d := admit(t, b, req(base+k, lim, 1, 0)); !d.Allowed {
			t.Errorf("first admission for key %q refused: it collides with another key", k)
		}
	}
	for _, k := range keys {
		if d := admit(t, b, req(base+k, lim, 1, 0)); d.Allowed {
			t.Errorf("second admission for key %q allowed: its state was lost", k)
		}
	}
}

func (s *suite) testBatch(t *testing.T) {
	b := s.cfg.New(t)
	bb, ok := b.(driver.BatchBackend)
	if !ok {
		t.Skip("backend does not implement driver.BatchBackend")
	}
	key, other := s.key(t, "k"), s.key(t, "other")
	lim := bucket.PerHour(1).WithBurst(5)
	batch := make([]driver.Admission, 12)
	for i := range batch {
		batch[i].Request = req(key, lim, 1, 0)
	}
	batch[3].Request = req("", lim, 1, 0)
	batch[7].Request = req(other, lim, 1, 0)
	bb.AdmitBatch(context.Background(), batch)
	var allowed []int
	for i, a := range batch {
		switch {
		case i == 3:
			if !errors.Is(a.Err, bucket.ErrEmptyKey) {
				t.Errorf("batch[3] with an empty key: err = %v, want ErrEmptyKey", a.Err)
			}
		case a.Err != nil:
			t.Errorf("batch[%d]: %v", i, a.Err)
		case a.Decision.Allowed:
			checkDecision(t, a.Request, a.Decision)
			allowed = append(allowed, i)
		}
	}
	want := []int{0, 1, 2, 4, 5, 7}
	if fmt.Sprint(allowed) != fmt.Sprint(want) {
		t.Errorf("batch admitted %v, want %v (in order, as sequential Admit calls would)", allowed, want)
	}
}

// testUnlimited: Unlimited admits anything at once, and its decisions
// carry the backend's clock like any other (Start is when the job may
// start, not 1970).
func (s *suite) testUnlimited(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	for range 100 {
		if d := admit(t, b, req(key, bucket.Unlimited, 1_000_000, 0)); !d.Allowed || d.Wait != 0 {
			t.Fatal("Unlimited refused an admission")
		}
	}
	// The clock of an unlimited decision lies between those of the
	// limited decisions around it. A backend whose unlimited decisions
	// read another clock than its own (a host's beside Redis's) is allowed
	// a second of difference.
	const slack = int64(time.Second)
	before := s.now(t, b)
	decided := map[string]driver.Decision{"Admit": admit(t, b, req(key, bucket.Unlimited, 1, 0))}
	if bb, ok := b.(driver.BatchBackend); ok {
		batch := []driver.Admission{{Request: req(key, bucket.Unlimited, 1, 0)}}
		bb.AdmitBatch(context.Background(), batch)
		if batch[0].Err != nil || !batch[0].Decision.Allowed {
			t.Fatalf("AdmitBatch(Unlimited) = %+v, %v; want allowed", batch[0].Decision, batch[0].Err)
		}
		decided["AdmitBatch"] = batch[0].Decision
	}
	after := s.now(t, b)
	for call, d := range decided {
		if d.Now < before-slack || d.Now > after+slack {
			t.Errorf("%s(Unlimited).Now = %d, want between the clock's %d and %d before and after it", call, d.Now, before, after)
		}
	}
}

func (s *suite) testIdleExpiry(t *testing.T) {
	if s.cfg.Forgotten == nil {
		t.Skip("Config.Forgotten not set")
	}
	b := s.cfg.New(t)
	ctx := context.Background()
	short := bucket.Every(10*time.Millisecond, 1).WithQuota(5, 100*time.Millisecond)
	long := bucket.PerHour(1).WithQuota(5, time.Hour)
	idle, busy, paused := s.key(t, "idle"), s.key(t, "busy"), s.key(t, "paused")
	admit(t, b, req(idle, short, 1, 0))
	admit(t, b, req(busy, long, 1, 0))
	if err := b.Pause(ctx, paused, time.Hour); err != nil {
		t.Fatal(err)
	}
	if s.cfg.Forgotten(t, b, busy) {
		t.Fatal("key forgotten right after admission")
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !s.cfg.Forgotten(t, b, idle) {
		if time.Now().After(deadline) {
			t.Fatal("idle key still held 10s after its bucket became fresh")
		}
		<-tick.C
	}
	if s.cfg.Forgotten(t, b, busy) {
		t.Error("key with an hour's quota in use was forgotten")
	}
	if s.cfg.Forgotten(t, b, paused) {
		t.Error("paused key was forgotten during its pause")
	}
	if d := admit(t, b, req(busy, long, 1, 0)); d.Allowed {
		t.Error("busy key's state was lost")
	}
}
