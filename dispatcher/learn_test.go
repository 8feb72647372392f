package dispatcher_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// throttled is a 429 whose answer said nothing: retry at once, the
// learned rate paces the retry.
type throttled struct{}

func (throttled) Error() string             { return "429" }
func (throttled) RetryAfter() time.Duration { return 0 }

// service is a handler standing for an API with a hidden limit: it
// answers 429 to a call that comes sooner than interval after the last
// one it served, reports what it says with bucket.Report, and records
// when it served each call.
type service struct {
	mu       sync.Mutex
	interval time.Duration
	last     time.Time
	served   []time.Time
	refused  int
	learned  []bool
	announce bool // the policy in every answer, as the IETF headers do
}

func (s *service) handle(ctx context.Context, tk task) (int, error) {
	s.mu.Lock()
	now := time.Now()
	ok := s.last.IsZero() || now.Sub(s.last) >= s.interval
	if ok {
		s.last = now
		s.served = append(s.served, now)
	} else {
		s.refused++
	}
	s.mu.Unlock()
	var fb bucket.Feedback
	if s.announce {
		fb.Quota, fb.Window = 1, s.interval
	}
	if !ok && !s.announce {
		fb.Throttled = true
	}
	if !fb.IsZero() {
		learned := bucket.Report(ctx, fb)
		s.mu.Lock()
		s.learned = append(s.learned, learned)
		s.mu.Unlock()
	}
	if !ok {
		return 0, throttled{}
	}
	return tk.n, nil
}

// submitAll submits n jobs of key and waits for them all.
func submitAll(t *testing.T, d *dispatcher.Dispatcher[task, int], key string, n int) {
	t.Helper()
	var fs []*dispatcher.Future[int]
	for i := range n {
		f, err := d.Submit(context.Background(), task{key, i})
		require.NoError(t, err)
		fs = append(fs, f)
	}
	for _, f := range fs {
		_, err := f.Wait(context.Background())
		require.NoError(t, err)
	}
}

// TestLearnThrottles: against a service of 20/s behind a limit of 100/s
// learning down to 1/s, 429s without headers slow the key: far fewer
// 429s than a fixed limit gets, and the key still serves near the
// service's rate.
func TestLearnThrottles(t *testing.T) {
	run := func(lim bucket.Limit) (served, refused int, st dispatcher.Stats, ks dispatcher.KeyStats) {
		synctest.Test(t, func(t *testing.T) {
			svc := &service{interval: 50 * time.Millisecond}
			d := newDispatcher(t, svc.handle, taskKey, dispatcher.WithLimiter(newLimiter(t, lim)),
				dispatcher.WithWorkers(4), dispatcher.WithKeyStats(10), dispatcher.WithMaxRequeues(1000))
			start := time.Now()
			submitAll(t, d, "A", 200)
			elapsed := time.Since(start)
			served, refused, st = len(svc.served), svc.refused, d.Stats()
			ks, _ = d.KeyStats("A")
			t.Logf("%v: 200 jobs in %v, %d 429s, %d learned, interval %v", lim, elapsed, refused, st.Learned, ks.Interval)
			assert.Less(t, elapsed, 12*time.Second, "200 jobs at 20/s took %v", elapsed)
		})
		return
	}
	served, fixed, fst, _ := run(bucket.PerSecond(100))
	assert.Equal(t, 200, served)
	assert.Zero(t, fst.Learned, "a fixed limit learned")
	served, learning, lst, ks := run(bucket.PerSecond(100).WithFloor(1, time.Second))
	assert.Equal(t, 200, served)
	assert.Positive(t, lst.Learned)
	assert.Less(t, learning*4, fixed, "429s: %d learning, %d fixed", learning, fixed)
	assert.Greater(t, ks.Interval, 10*time.Millisecond, "KeyStats.Interval shows no learned rate")
}

// TestLearnAnnounced: a policy the service announces in every answer
// paces the key at it: no 429 after the first answer, and the key's
// figures show the learned interval.
func TestLearnAnnounced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		svc := &service{interval: 100 * time.Millisecond, announce: true}
		lim := newLimiter(t, bucket.PerSecond(100).WithFloor(1, time.Second))
		d := newDispatcher(t, svc.handle, taskKey, dispatcher.WithLimiter(lim),
			dispatcher.WithWorkers(4), dispatcher.WithKeyStats(10), dispatcher.WithMaxRequeues(1000))
		submitAll(t, d, "A", 50)
		ks, ok := d.KeyStats("A")
		require.True(t, ok)
		assert.Equal(t, 100*time.Millisecond, ks.Interval)
		assert.LessOrEqual(t, svc.refused, 4, "429s after the policy was announced (4 workers started at once)")
		for i, l := range svc.learned {
			require.True(t, l, "report %d not learned", i)
		}
	})
}

// TestLearnOnePerOverload: 429s of admissions decided before a drop drop
// nothing again: jobs booked at the old rate that all fail drop the rate
// once, not once each.
func TestLearnOnePerOverload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu    sync.Mutex
			calls int
			all   = make(chan struct{}) // closed when the 8 first calls have started
		)
		lim := newLimiter(t, bucket.PerSecond(100).WithBurst(8).WithFloor(1, time.Second))
		h := func(ctx context.Context, tk task) (int, error) {
			mu.Lock()
			calls++
			first := calls <= 8
			if calls == 8 {
				close(all)
			}
			mu.Unlock()
			if first {
				<-all // the 8 admissions were decided before any answer
				bucket.Report(ctx, bucket.Feedback{Throttled: true})
				return 0, throttled{}
			}
			return tk.n, nil
		}
		d := newDispatcher(t, h, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithWorkers(8), dispatcher.WithKeyStats(10))
		submitAll(t, d, "A", 8)
		iv, err := lim.Learn(context.Background(), "A", bucket.Feedback{})
		require.NoError(t, err)
		// One drop: 10ms/0.7, climbing back since; two would be 20.4ms.
		assert.LessOrEqual(t, iv, time.Duration(14285715), "8 answers of one overload dropped more than once")
		assert.Greater(t, iv, 10*time.Millisecond, "no drop")
	})
}

// TestReportFixedLimit: a handler of a fixed limit reports into nothing.
func TestReportFixedLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := func(ctx context.Context, tk task) (int, error) {
			if bucket.Report(ctx, bucket.Feedback{Throttled: true}) {
				return 0, assert.AnError
			}
			return tk.n, nil
		}
		d := newDispatcher(t, h, taskKey, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(100))))
		submitAll(t, d, "A", 3)
		assert.Zero(t, d.Stats().Learned)
	})
}
