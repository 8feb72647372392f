package backendtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The learned-limit guarantees (issue 16): what a key learns through one
// handle holds for every handle, applied by every decision, never faster
// than the limit's rate nor slower than its floor, and it expires.

// learnBackend returns b as a LearnBackend, or skips t.
func learnBackend(t *testing.T, b driver.Backend) driver.LearnBackend {
	t.Helper()
	lb, ok := b.(driver.LearnBackend)
	if !ok {
		t.Skip("backend does not implement driver.LearnBackend")
	}
	return lb
}

func learn(t *testing.T, b driver.LearnBackend, key string, lim bucket.Limit, fb driver.Feedback) time.Duration {
	t.Helper()
	d, err := b.Learn(context.Background(), key, Limit(lim), fb)
	require.NoError(t, err, "Learn(%q, %v, %+v)", key, lim, fb)
	return d
}

// dropped returns the interval a throttle drops iv to, as a backend of
// ticks of unit finds it.
func dropped(iv, unit time.Duration) time.Duration {
	var st driver.State
	lim := driver.Limit{Rate: 1, Period: iv, Burst: 1, FloorRate: 1, FloorPeriod: driver.MaxDuration}
	return driver.Learn(&st, &lim, &driver.Feedback{Throttled: true}, unit, 0)
}

// testLearnValidation: Learn refuses an empty key, an invalid limit and
// invalid feedback with matchable errors; on a fixed limit it changes
// nothing and returns the limit's interval.
func (s *suite) testLearnValidation(t *testing.T) {
	b := learnBackend(t, s.cfg.New(t))
	key := s.key(t, "k")
	lim := bucket.PerSecond(10).WithFloor(1, time.Second)
	ctx := context.Background()
	_, err := b.Learn(ctx, "", Limit(lim), driver.Feedback{})
	assert.ErrorIs(t, err, driver.ErrEmptyKey)
	_, err = b.Learn(ctx, key, Limit(bucket.PerSecond(10).WithFloor(20, time.Second)), driver.Feedback{})
	assert.ErrorIs(t, err, driver.ErrInvalidLimit, "a floor above the rate")
	_, err = b.Learn(ctx, key, Limit(lim), driver.Feedback{Remaining: -1})
	assert.ErrorIs(t, err, driver.ErrInvalidFeedback)

	fixed := bucket.PerSecond(10)
	assert.Equal(t, 100*time.Millisecond, learn(t, b, key, fixed, driver.Feedback{Throttled: true, Interval: time.Second}))
	assert.True(t, admit(t, b, req(key, fixed, 1, 0)).Allowed)
	d := admit(t, b, req(key, fixed, 1, 0))
	assert.False(t, d.Allowed)
	assert.LessOrEqual(t, d.Wait, 100*time.Millisecond, "a fixed limit learned")
}

// testLearnAnnounced: an announced interval learned through one handle
// paces the key's admissions through another, never faster than the
// limit's rate nor slower than its floor, until its TTL passes.
func (s *suite) testLearnAnnounced(t *testing.T) {
	b := learnBackend(t, s.cfg.New(t))
	peer := s.peer(t, b)
	key := s.key(t, "k")
	lim := bucket.PerSecond(100).WithFloor(2, time.Second)

	assert.Equal(t, 10*time.Millisecond, learn(t, b, key, lim, driver.Feedback{Interval: time.Millisecond}), "faster than the rate")
	assert.Equal(t, 500*time.Millisecond, learn(t, b, key, lim, driver.Feedback{Interval: time.Hour}), "slower than the floor")
	assert.Equal(t, 200*time.Millisecond, learn(t, b, key, lim, driver.Feedback{Interval: 200 * time.Millisecond, TTL: time.Hour}))

	d := admit(t, peer, req(key, lim, 1, 0))
	require.True(t, d.Allowed)
	assert.Equal(t, 200*time.Millisecond, d.Interval, "the learned interval, through the peer")
	d = admit(t, peer, req(key, lim, 1, 0))
	assert.False(t, d.Allowed)
	assert.Greater(t, d.Wait, 100*time.Millisecond, "the second admission at the limit's own rate")

	// A TTL passes on the backend's clock.
	other := s.key(t, "ttl")
	learn(t, b, other, lim, driver.Feedback{Interval: 200 * time.Millisecond, TTL: 50 * time.Millisecond})
	assert.Equal(t, 200*time.Millisecond, admit(t, peer, req(other, lim, 1, 0)).Interval)
	require.Eventually(t, func() bool {
		return admit(t, peer, req(other, lim, 1, time.Second)).Interval == 10*time.Millisecond
	}, 10*time.Second, 20*time.Millisecond, "the learned interval never expired")
}

// testLearnThrottle: a throttle drops the rate by driver.Beta for every
// handle; a throttle of an admission decided before the drop drops
// nothing again, one decided after it does.
func (s *suite) testLearnThrottle(t *testing.T) {
	b := learnBackend(t, s.cfg.New(t))
	peer := learnBackend(t, s.peer(t, b))
	key := s.key(t, "k")
	// The quota, which never binds, keeps the key from going fresh (and
	// forgotten, with its generations) between the admission and its
	// throttles on a loaded machine.
	lim := bucket.PerSecond(100).WithQuota(1000, time.Hour).WithFloor(1, time.Second)

	first := admit(t, peer, req(key, lim, 1, 0))
	require.True(t, first.Allowed)
	iv := learn(t, b, key, lim, driver.Feedback{Throttled: true, Gen: first.Booking.Gen})
	assert.Contains(t, []time.Duration{dropped(10*time.Millisecond, time.Nanosecond), dropped(10*time.Millisecond, time.Microsecond)}, iv, "10ms / Beta")
	again := learn(t, peer, key, lim, driver.Feedback{Throttled: true, Gen: first.Booking.Gen})
	assert.LessOrEqual(t, again, iv, "a second drop for one overload")

	later := admit(t, peer, req(key, lim, 1, time.Second))
	require.True(t, later.Allowed)
	assert.Greater(t, later.Interval, 10*time.Millisecond, "the peer decided at the limit's rate after a drop")
	third := learn(t, b, key, lim, driver.Feedback{Throttled: true, Gen: later.Booking.Gen})
	assert.Greater(t, third, iv, "a throttle of an admission decided after the drop")
}

// testLearnRemaining: remaining units pace the key until the reset; none
// remaining pauses it until the reset.
func (s *suite) testLearnRemaining(t *testing.T) {
	b := learnBackend(t, s.cfg.New(t))
	peer := s.peer(t, b)
	key := s.key(t, "k")
	lim := bucket.PerSecond(100).WithFloor(1, time.Second)

	assert.Equal(t, 250*time.Millisecond, learn(t, b, key, lim, driver.Feedback{HasRemaining: true, Remaining: 4, Reset: time.Second}))
	learn(t, b, key, lim, driver.Feedback{HasRemaining: true, Remaining: 0, Reset: time.Hour})
	d := admit(t, peer, req(key, lim, 1, 0))
	assert.False(t, d.Allowed)
	assert.Greater(t, d.Wait, 59*time.Minute, "none remaining did not pause the key until the reset")
}

// testLearnConcurrent: handles admitting and throttling one key at once
// never pass its limit's rate (judged by Check), and learn: the key
// admits fewer than it would at its own rate.
func (s *suite) testLearnConcurrent(t *testing.T) {
	b := learnBackend(t, s.cfg.New(t))
	handles := []driver.LearnBackend{b, learnBackend(t, s.peer(t, b))}
	key := s.key(t, "k")
	lim := bucket.PerSecond(200).WithBurst(4).WithFloor(1, time.Second)
	var (
		mu     sync.Mutex
		starts []Start
	)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var g errgroup.Group
	for i := range 8 {
		h := handles[i%2]
		g.Go(func() error {
			for n := 0; ctx.Err() == nil; n++ {
				r := req(key, lim, 1, 20*time.Millisecond)
				d, err := h.Admit(context.Background(), r)
				if err != nil {
					return err
				}
				if !d.Allowed {
					continue
				}
				mu.Lock()
				starts = append(starts, Start{At: d.Start(), Cost: 1})
				mu.Unlock()
				if n%10 == 0 {
					if _, err := h.Learn(context.Background(), key, Limit(lim), driver.Feedback{Throttled: true, Gen: d.Booking.Gen}); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	require.NoError(t, Check(lim, starts))
	assert.Less(t, len(starts), 4+100, "admitted %d in 0.5 s at 200/s: throttles slowed nothing", len(starts))
}
