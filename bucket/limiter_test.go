package bucket_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func newLimiter(t *testing.T, b driver.Backend, lim bucket.Limit, opts ...bucket.Option) *bucket.Limiter {
	t.Helper()
	l, err := bucket.NewLimiter(b, lim, opts...)
	require.NoError(t, err)
	return l
}

// okDelay and okAfter describe a reservation's outcome, so that a failed
// comparison prints the wanted and the actual one whole.
func okDelay(r bucket.Reservation) string {
	if !r.OK {
		return fmt.Sprintf("refused, admissible in %v", r.Delay)
	}
	return okAfter(r.Delay)
}

func okAfter(d time.Duration) string { return fmt.Sprintf("OK after %v", d) }

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
	_, err := bucket.NewLimiter(nil, bucket.PerSecond(1))
	assert.Error(t, err, "NewLimiter(nil backend)")
	_, err = bucket.NewLimiter(s, bucket.PerSecond(1).WithBurst(0))
	assertLimitError(t, err, "Burst", "NewLimiter(burst 0)")
	_, err = bucket.NewLimiter(s, bucket.PerSecond(1), bucket.WithKeyLimit(nil))
	assert.Error(t, err, "NewLimiter(WithKeyLimit(nil))")
	_, err = bucket.NewLimiter(s, bucket.PerSecond(1), nil)
	assert.EqualError(t, err, "bucket: NewLimiter: option 0 is nil")

	// The limiter keeps a copy of the caller's quotas.
	lim := bucket.PerSecond(1).WithQuota(5, time.Hour)
	l := newLimiter(t, s, lim)
	lim.Quotas[0].Max = 1
	assert.Equal(t, int64(5), l.Limit("k").Quotas[0].Max, "the limiter's quota after the caller changed its own")
}

func TestLimiterAllow(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l := newLimiter(t, newStore(t, clock), bucket.PerSecond(1).WithBurst(3))
	ctx := context.Background()
	allow := func(key string, n int, want bool) {
		t.Helper()
		ok, err := l.AllowN(ctx, key, n)
		require.NoError(t, err, "AllowN(%q, %d)", key, n)
		require.Equal(t, want, ok, "AllowN(%q, %d)", key, n)
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
		ok, err := l.AllowN(ctx, tt.key, tt.n)
		assert.ErrorIs(t, err, tt.want, "AllowN(%q, %d)", tt.key, tt.n)
		assert.False(t, ok, "AllowN(%q, %d)", tt.key, tt.n)
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
			require.NoError(t, err, "Allow(%q)", key)
			if ok {
				n++
			}
		}
		return n
	}
	assert.Equal(t, 2, count("k"), "admitted under a key limit of burst 2")
	mu.Lock()
	burst = 5
	mu.Unlock()
	assert.Equal(t, 3, count("k"), "admitted after raising the key's burst to 5")
	assert.Equal(t, 10, count("free"), "admitted of 10 for an unlimited key")
	_, err := l.Allow(ctx, "bad")
	assertLimitError(t, err, "Rate", `Allow("bad") with an invalid key limit`)
	assert.Equal(t, int64(5), l.Limit("k").Burst, `Limit("k").Burst`)
}

func TestLimiterUnlimitedSkipsBackend(t *testing.T) {
	b := &countingBackend{Backend: newStore(t, nil)}
	l := newLimiter(t, b, bucket.Unlimited)
	ctx := context.Background()
	for range 5 {
		ok, err := l.AllowN(ctx, "k", 1_000_000)
		require.NoError(t, err, "Unlimited: AllowN")
		require.True(t, ok, "Unlimited: AllowN refused")
		require.NoError(t, l.Wait(ctx, "k"))
	}
	assert.Zero(t, b.calls, "Unlimited asked the backend")
	_, err := l.Reserve(ctx, "", 1, 0)
	assert.ErrorIs(t, err, bucket.ErrEmptyKey, "Unlimited: Reserve with an empty key")
	// An invalid request is refused under every limit, Unlimited too.
	for _, tt := range []struct {
		key  string
		n    int
		want error
	}{{"", 1, bucket.ErrEmptyKey}, {"k", 0, bucket.ErrInvalidCost}} {
		ok, err := l.AllowN(ctx, tt.key, tt.n)
		assert.ErrorIs(t, err, tt.want, "Unlimited: AllowN(%q, %d)", tt.key, tt.n)
		assert.False(t, ok, "Unlimited: AllowN(%q, %d)", tt.key, tt.n)
	}
}

func TestLimiterWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(10))
		ctx := context.Background()
		start := time.Now()
		for i := range 5 {
			require.NoError(t, l.Wait(ctx, "k"))
			assert.Equal(t, time.Duration(i)*100*time.Millisecond, time.Since(start), "Wait %d returned after", i+1)
		}
		assert.ErrorIs(t, l.WaitN(ctx, "k", 2), bucket.ErrImpossible, "WaitN(2) over burst 1")
		assert.Equal(t, 400*time.Millisecond, time.Since(start), "WaitN(2) over burst 1 returned after, want at once")
	})
}

func TestLimiterWaitDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1))
		require.NoError(t, l.Wait(context.Background(), "k"))
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := l.Wait(ctx, "k")
		const what = "Wait with the next slot 1s away and a deadline in 500ms"
		require.ErrorIs(t, err, context.DeadlineExceeded, what)
		var we *bucket.WaitError
		require.ErrorAs(t, err, &we, what)
		require.Equal(t, time.Second, we.Delay, what)
		require.Equal(t, "k", we.Key, what)
		assert.Zero(t, time.Since(start), "Wait beyond the deadline returned after, want at once")
		// Nothing was charged: the next slot is still 1s away.
		r, err := l.Reserve(context.Background(), "k", 1, 2*time.Second)
		if assert.NoError(t, err) {
			assert.Equal(t, okAfter(time.Second), okDelay(r), "Reserve after a Wait refused by its deadline")
		}
	})
}

func TestLimiterWaitCancelRefunds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1))
		require.NoError(t, l.Wait(context.Background(), "k"))
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		require.ErrorIs(t, l.Wait(ctx, "k"), context.Canceled, "Wait cancelled after 300ms")
		require.Equal(t, 300*time.Millisecond, time.Since(start), "Wait cancelled after 300ms returned after")
		// The cancelled booking was given back: its slot, 700ms away, is free.
		r, err := l.Reserve(context.Background(), "k", 1, 2*time.Second)
		if assert.NoError(t, err) {
			assert.Equal(t, okAfter(700*time.Millisecond), okDelay(r), "Reserve after a cancelled Wait")
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
		require.NoError(t, err, "Reserve(maxWait %v)", maxWait)
		return r
	}
	reserve(0)
	r := reserve(10 * time.Second)
	require.Equal(t, okAfter(time.Second), okDelay(r), "second Reserve")
	for range 2 { // cancelling twice is harmless
		require.NoError(t, r.Cancel(ctx))
	}
	r2 := reserve(10 * time.Second)
	r3 := reserve(10 * time.Second)
	assert.Equal(t, []string{okAfter(time.Second), okAfter(2 * time.Second)}, []string{okDelay(r2), okDelay(r3)}, "two Reserves after a cancel")
	refused := reserve(10 * time.Second) // quota 3/h used up
	require.False(t, refused.OK, "fourth Reserve of quota 3/h = %+v", refused)
	assert.NoError(t, refused.Cancel(ctx), "Cancel of a refused reservation")
	assert.NoError(t, (&bucket.Reservation{}).Cancel(ctx), "Cancel of a zero Reservation")
	// r2 is not the latest booking: cancelling it gives nothing back.
	require.NoError(t, r2.Cancel(ctx))
	r = reserve(time.Hour)
	assert.False(t, r.OK, "after cancelling a booking a later one depends on, Reserve = %+v", r)
}

func TestLimiterPause(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l := newLimiter(t, newStore(t, clock), bucket.PerSecond(100).WithBurst(5))
	ctx := context.Background()
	require.NoError(t, l.Pause(ctx, "k", 2*time.Second))
	require.NoError(t, l.Pause(ctx, "k", time.Second)) // does not shorten it
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
		ok, err := l.Allow(ctx, tt.key)
		since := clock.Now().Sub(time.Unix(1_700_000_000, 0))
		if assert.NoError(t, err, "Allow(%q) %v after Pause(2s)", tt.key, since) {
			assert.Equal(t, tt.want, ok, "Allow(%q) %v after Pause(2s)", tt.key, since)
		}
	}
	assert.ErrorIs(t, l.Pause(ctx, "", time.Second), bucket.ErrEmptyKey, `Pause("")`)
	assert.NoError(t, l.Pause(ctx, "k", -time.Second), "Pause(-1s)")
	ok, _ := l.Allow(ctx, "k")
	assert.True(t, ok, "a negative Pause paused the key")
}

func TestLimiterPauseWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t, newStore(t, nil), bucket.PerSecond(100))
		ctx := context.Background()
		start := time.Now()
		require.NoError(t, l.Pause(ctx, "k", 3*time.Second))
		require.NoError(t, l.Wait(ctx, "k"))
		assert.Equal(t, 3*time.Second, time.Since(start), "Wait during Pause(3s) returned after")
	})
}

func TestLimiterClosedBackend(t *testing.T) {
	s := newStore(t, nil)
	l := newLimiter(t, s, bucket.PerSecond(1))
	s.Close()
	ctx := context.Background()
	ok, err := l.Allow(ctx, "k")
	assert.ErrorIs(t, err, bucket.ErrClosed, "Allow on a closed store")
	assert.False(t, ok, "Allow on a closed store")
	assert.ErrorIs(t, l.Wait(ctx, "k"), bucket.ErrClosed, "Wait on a closed store")
	assert.ErrorIs(t, l.Pause(ctx, "k", time.Second), bucket.ErrClosed, "Pause on a closed store")
}

// TestWaitOnEndedContext: Wait with a context that has ended already, by
// cancellation or a deadline in the past, returns its error and charges
// nothing.
func TestWaitOnEndedContext(t *testing.T) {
	l := newLimiter(t, newStore(t, nil), bucket.PerSecond(1))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l.Wait(cancelled, "k"), context.Canceled, "Wait on a cancelled context")
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	assert.ErrorIs(t, l.Wait(expired, "k"), context.DeadlineExceeded, "Wait on an expired context")
	ok, err := l.Allow(context.Background(), "k")
	assert.NoError(t, err)
	assert.True(t, ok, "Allow after two Waits that ended at once refused: they charged the bucket")
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
		require.NoError(t, l.Wait(context.Background(), "k"))                          // booked at 0.4s: the next slot is 1.4s
		ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond) // at 1.3s
		defer cancel()
		start := time.Now()
		err := l.Wait(ctx, "k") // decided at 0.8s: admitted 0.6s ahead, within the 0.9s asked
		var we *bucket.WaitError
		require.ErrorAs(t, err, &we, "Wait whose slot the round trip pushed past the deadline")
		assert.Equal(t, 400*time.Millisecond, time.Since(start), "Wait returned after it began, want at the backend's answer")
		// The slot was given back: it is the next one still.
		r, err := l.Reserve(context.Background(), "k", 1, time.Second)
		if assert.NoError(t, err) {
			assert.Equal(t, okAfter(200*time.Millisecond), okDelay(r),
				"Reserve after it, decided at 1.2s: the slot at 1.4s")
		}
	})
}
