package bucket_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a memstore clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newStore returns a memstore without a sweeper, on clock if not nil.
func newStore(t *testing.T, clock *fakeClock) *memstore.Store {
	t.Helper()
	opts := memstore.Options{SweepInterval: -1}
	if clock != nil {
		opts.Now = clock.Now
	}
	s, err := memstore.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newLimiter(t *testing.T, b driver.Backend, lim bucket.Limit, opts ...bucket.Option) *bucket.Limiter {
	t.Helper()
	l, err := bucket.NewLimiter(b, lim, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// countingBackend counts the calls that reach its backend.
type countingBackend struct {
	driver.Backend
	mu    sync.Mutex
	calls int
}

func (c *countingBackend) Admit(ctx context.Context, req driver.Request) (driver.Decision, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	return c.Backend.Admit(ctx, req)
}

func TestNewLimiter(t *testing.T) {
	s := newStore(t, nil)
	if _, err := bucket.NewLimiter(nil, bucket.PerSecond(1)); err == nil {
		t.Error("NewLimiter(nil backend) succeeded, want an error")
	}
	_, err := bucket.NewLimiter(s, bucket.PerSecond(1).WithBurst(0))
	wantLimitError(t, "NewLimiter(burst 0)", err, "Burst")
	if _, err := bucket.NewLimiter(s, bucket.PerSecond(1), bucket.WithKeyLimit(nil)); err == nil {
		t.Error("NewLimiter(WithKeyLimit(nil)) succeeded, want an error")
	}

	// The limiter keeps a copy of the caller's quotas.
	lim := bucket.PerSecond(1).WithQuota(5, time.Hour)
	l := newLimiter(t, s, lim)
	lim.Quotas[0].Max = 1
	if got := l.Limit("k").Quotas[0].Max; got != 5 {
		t.Errorf("after the caller changed its limit's quota, the limiter's is %d, want 5", got)
	}
}

func TestLimiterAllow(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l := newLimiter(t, newStore(t, clock), bucket.PerSecond(1).WithBurst(3))
	ctx := context.Background()
	allow := func(key string, n int, want bool) {
		t.Helper()
		ok, err := l.AllowN(ctx, key, n)
		if err != nil || ok != want {
			t.Fatalf("AllowN(%q, %d) = %v, %v; want %v", key, n, ok, err, want)
		}
	}
	allow("a", 1, true)
	allow("a", 2, true)
	allow("a", 1, false)
	allow("b", 3, true) // another key, another bucket
	clock.Advance(time.Second - 1)
	allow("a", 1, false)
	clock.Advance(1)
	allow("a", 1, true)
	allow("a", 1, false)

	tests := []struct {
		key  string
		n    int
		want error
	}{
		{"", 1, bucket.ErrEmptyKey},
		{"a", 0, bucket.ErrInvalidCost},
		{"a", -1, bucket.ErrInvalidCost},
		{"a", 4, bucket.ErrImpossible},
	}
	for _, tt := range tests {
		if ok, err := l.AllowN(ctx, tt.key, tt.n); ok || !errors.Is(err, tt.want) {
			t.Errorf("AllowN(%q, %d) = %v, %v; want false, %v", tt.key, tt.n, ok, err, tt.want)
		}
	}
}

func TestLimiterKeyLimit(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	var mu sync.Mutex
	burst := int64(2)
	l := newLimiter(t, newStore(t, clock), bucket.PerHour(1), bucket.WithKeyLimit(func(key string) bucket.Limit {
		mu.Lock()
		defer mu.Unlock()
		switch key {
		case "bad":
			return bucket.PerHour(0)
		case "free":
			return bucket.Unlimited
		}
		return bucket.PerHour(1).WithBurst(burst)
	}))
	ctx := context.Background()
	count := func(key string) int {
		t.Helper()
		n := 0
		for range 10 {
			ok, err := l.Allow(ctx, key)
			if err != nil {
				t.Fatalf("Allow(%q): %v", key, err)
			}
			if ok {
				n++
			}
		}
		return n
	}
	if n := count("k"); n != 2 {
		t.Errorf("key limit with burst 2 admitted %d, want 2", n)
	}
	mu.Lock()
	burst = 5
	mu.Unlock()
	if n := count("k"); n != 3 {
		t.Errorf("after raising the key's burst to 5, admitted %d more, want 3", n)
	}
	if n := count("free"); n != 10 {
		t.Errorf("an unlimited key admitted %d of 10", n)
	}
	_, err := l.Allow(ctx, "bad")
	wantLimitError(t, `Allow("bad") with an invalid key limit`, err, "Rate")
	if lim := l.Limit("k"); lim.Burst != 5 {
		t.Errorf("Limit(%q) = %v, want burst 5", "k", lim)
	}
}

func TestLimiterUnlimitedSkipsBackend(t *testing.T) {
	b := &countingBackend{Backend: newStore(t, nil)}
	l := newLimiter(t, b, bucket.Unlimited)
	ctx := context.Background()
	for range 5 {
		if ok, err := l.AllowN(ctx, "k", 1_000_000); !ok || err != nil {
			t.Fatalf("Unlimited: AllowN = %v, %v; want true, nil", ok, err)
		}
		if err := l.Wait(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	if b.calls != 0 {
		t.Errorf("Unlimited asked the backend %d times, want never", b.calls)
	}
	if _, err := l.Reserve(ctx, "", 1, 0); !errors.Is(err, bucket.ErrEmptyKey) {
		t.Errorf("Unlimited: Reserve with an empty key = %v, want ErrEmptyKey", err)
	}
	// An invalid request is refused under every limit, Unlimited too.
	for _, tt := range []struct {
		key  string
		n    int
		want error
	}{{"", 1, bucket.ErrEmptyKey}, {"k", 0, bucket.ErrInvalidCost}} {
		if ok, err := l.AllowN(ctx, tt.key, tt.n); ok || !errors.Is(err, tt.want) {
			t.Errorf("Unlimited: AllowN(%q, %d) = %v, %v; want false, %v", tt.key, tt.n, ok, err, tt.want)
		}
	}
}

func TestLimiterWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(10))
		ctx := context.Background()
		start := time.Now()
		for i := range 5 {
			if err := l.Wait(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			if got, want := time.Since(start), time.Duration(i)*100*time.Millisecond; got != want {
				t.Errorf("Wait %d returned after %v, want %v", i+1, got, want)
			}
		}
		if err := l.WaitN(ctx, "k", 2); !errors.Is(err, bucket.ErrImpossible) || time.Since(start) != 400*time.Millisecond {
			t.Errorf("WaitN(2) over burst 1 = %v after %v, want ErrImpossible at once", err, time.Since(start)-400*time.Millisecond)
		}
	})
}

func TestLimiterWaitDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1))
		if err := l.Wait(context.Background(), "k"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := l.Wait(ctx, "k")
		var we *bucket.WaitError
		if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &we) || we.Delay != time.Second || we.Key != "k" {
			t.Fatalf("Wait with the next slot 1s away and a deadline in 500ms = %v, want a *WaitError for 1s matching DeadlineExceeded", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Wait beyond the deadline returned after %v, want at once", d)
		}
		// Nothing was charged: the next slot is still 1s away.
		r, err := l.Reserve(context.Background(), "k", 1, 2*time.Second)
		if err != nil || !r.OK || r.Delay != time.Second {
			t.Errorf("after a Wait refused by its deadline, Reserve = %+v, %v; want OK after 1s", r, err)
		}
	})
}

func TestLimiterWaitCancelRefunds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1))
		if err := l.Wait(context.Background(), "k"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		if err := l.Wait(ctx, "k"); !errors.Is(err, context.Canceled) || time.Since(start) != 300*time.Millisecond {
			t.Fatalf("Wait cancelled after 300ms = %v after %v, want context.Canceled after 300ms", err, time.Since(start))
		}
		// The cancelled booking was given back: its slot, 700ms away, is free.
		r, err := l.Reserve(context.Background(), "k", 1, 2*time.Second)
		if err != nil || !r.OK || r.Delay != 700*time.Millisecond {
			t.Errorf("after a cancelled Wait, Reserve = %+v, %v; want OK after 700ms", r, err)
		}
	})
}

func TestReservationCancel(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l := newLimiter(t, newStore(t, clock), bucket.PerSecond(1).WithQuota(3, time.Hour))
	ctx := context.Background()
	reserve := func(maxWait time.Duration) bucket.Reservation {
		t.Helper()
		r, err := l.Reserve(ctx, "k", 1, maxWait)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	reserve(0)
	r := reserve(10 * time.Second)
	if !r.OK || r.Delay != time.Second {
		t.Fatalf("second Reserve = %+v, want OK after 1s", r)
	}
	for range 2 { // cancelling twice is harmless
		if err := r.Cancel(ctx); err != nil {
			t.Fatal(err)
		}
	}
	r2 := reserve(10 * time.Second)
	r3 := reserve(10 * time.Second)
	if !r2.OK || r2.Delay != time.Second || !r3.OK || r3.Delay != 2*time.Second {
		t.Errorf("after a cancel, Reserve = %+v then %+v, want OK after 1s then 2s", r2, r3)
	}
	refused := reserve(10 * time.Second) // quota 3/h used up
	if refused.OK {
		t.Fatalf("fourth Reserve of quota 3/h = %+v, want refused", refused)
	}
	if err := refused.Cancel(ctx); err != nil {
		t.Errorf("Cancel of a refused reservation = %v, want nil", err)
	}
	if err := (&bucket.Reservation{}).Cancel(ctx); err != nil {
		t.Errorf("Cancel of a zero Reservation = %v, want nil", err)
	}
	// r2 is not the latest booking: cancelling it gives nothing back.
	if err := r2.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if r := reserve(time.Hour); r.OK {
		t.Errorf("after cancelling a booking a later one depends on, Reserve = %+v, want refused", r)
	}
}

func TestLimiterPause(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l := newLimiter(t, newStore(t, clock), bucket.PerSecond(100).WithBurst(5))
	ctx := context.Background()
	if err := l.Pause(ctx, "k", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.Pause(ctx, "k", time.Second); err != nil { // does not shorten it
		t.Fatal(err)
	}
	for _, tt := range []struct {
		advance time.Duration
		key     string
		want    bool
	}{
		{0, "k", false},
		{0, "other", true},
		{2*time.Second - 1, "k", false},
		{1, "k", true},
	} {
		clock.Advance(tt.advance)
		if ok, err := l.Allow(ctx, tt.key); err != nil || ok != tt.want {
			t.Errorf("Allow(%q) %v after Pause(2s) = %v, %v; want %v",
				tt.key, clock.Now().Sub(time.Unix(1_700_000_000, 0)), ok, err, tt.want)
		}
	}
	if err := l.Pause(ctx, "", time.Second); !errors.Is(err, bucket.ErrEmptyKey) {
		t.Errorf("Pause(\"\") = %v, want ErrEmptyKey", err)
	}
	if err := l.Pause(ctx, "k", -time.Second); err != nil {
		t.Errorf("Pause(-1s) = %v, want nil", err)
	}
	if ok, _ := l.Allow(ctx, "k"); !ok {
		t.Error("a negative Pause paused the key")
	}
}

func TestLimiterPauseWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(100))
		ctx := context.Background()
		start := time.Now()
		if err := l.Pause(ctx, "k", 3*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := l.Wait(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Errorf("Wait during Pause(3s) returned after %v, want 3s", d)
		}
	})
}

func TestLimiterClosedBackend(t *testing.T) {
	s := newStore(t, nil)
	l := newLimiter(t, s, bucket.PerSecond(1))
	s.Close()
	ctx := context.Background()
	if ok, err := l.Allow(ctx, "k"); ok || !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Allow on a closed store = %v, %v; want false, ErrClosed", ok, err)
	}
	if err := l.Wait(ctx, "k"); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Wait on a closed store = %v, want ErrClosed", err)
	}
	if err := l.Pause(ctx, "k", time.Second); !errors.Is(err, bucket.ErrClosed) {
		t.Errorf("Pause on a closed store = %v, want ErrClosed", err)
	}
}

// TestWaitOnEndedContext: Wait with a context that has ended already, by
// cancellation or a deadline in the past, returns its error and charges
// nothing.
func TestWaitOnEndedContext(t *testing.T) {
	l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(cancelled, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait on a cancelled context = %v, want context.Canceled", err)
	}
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if err := l.Wait(expired, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on an expired context = %v, want context.DeadlineExceeded", err)
	}
	if ok, err := l.Allow(context.Background(), "k"); !ok || err != nil {
		t.Errorf("Allow after two Waits that ended at once = %v, %v: they charged the bucket", ok, err)
	}
}

// slowAdmit is a backend whose admissions take a round trip of rtt.
type slowAdmit struct {
	driver.Backend
	rtt time.Duration
}

func (s slowAdmit) Admit(ctx context.Context, req driver.Request) (driver.Decision, error) {
	time.Sleep(s.rtt)
	return s.Backend.Admit(ctx, req)
}

// TestWaitDeadlinePassedInRoundTrip: when the backend's round trip uses
// up the margin, so that the slot it booked now lies past ctx's deadline,
// Wait gives the slot back and returns a *WaitError as soon as the answer
// comes, rather than sleep until the deadline.
func TestWaitDeadlinePassedInRoundTrip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, slowAdmit{newStore(t, nil), 400 * time.Millisecond}, bucket.PerSecond(1))
		if err := l.Wait(context.Background(), "k"); err != nil { // booked at 0.4s: the next slot is 1.4s
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond) // at 1.3s
		defer cancel()
		start := time.Now()
		err := l.Wait(ctx, "k") // decided at 0.8s: admitted 0.6s ahead, within the 0.9s asked
		var we *bucket.WaitError
		if !errors.As(err, &we) {
			t.Fatalf("Wait whose slot the round trip pushed past the deadline = %v, want a *WaitError", err)
		}
		if d := time.Since(start); d != 400*time.Millisecond {
			t.Errorf("Wait returned %v after it began, want at the backend's answer (400ms)", d)
		}
		// The slot was given back: it is the next one still.
		r, err := l.Reserve(context.Background(), "k", 1, time.Second)
		if err != nil || !r.OK || r.Delay != 200*time.Millisecond {
			t.Errorf("Reserve after it = %+v, %v; want OK for the slot at 1.4s (200ms after the 1.2s it is decided at)", r, err)
		}
	})
}
