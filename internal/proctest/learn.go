package proctest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// The learned-limit test (guarantee 11) runs the test binary again as 3
// processes admitting on one key of LearnLimit, 8 goroutines each, as
// Child does. After a second, one of them reports a throttle (a 429
// without headers) for its latest admission, and nothing else: the
// merged starts of all of them after the drop must conform to the
// dropped rate, 0.7 × 200/s climbing back along the cubic, so that the
// one process's 429 slowed the others; the starts before it must reach
// the limit's own rate, so that the slowing is the drop's.

// LearnLimit is the limit of the learned-limit test: 200/s learning down
// to 1/s.
var LearnLimit = bucket.PerSecond(200).WithBurst(4).WithFloor(1, time.Second)

// learnJudged is how long after the drop the merged starts are judged
// against the dropped rate: the cubic climbs from 140/s to 164/s over it
// (K = ∛150 s = 5.3 s), below learnBound.
const learnJudged = time.Second

// learnBound is the rate the starts after the drop must keep to, with
// LearnLimit's burst: between the cubic's 164/s and the limit's 200/s.
var learnBound = bucket.PerSecond(175).WithBurst(4)

// Learns runs the learned-limit test with children that re-run t (a
// top-level test) with cfg.Env set: such a child calls LearnChild.
func Learns(t *testing.T, cfg Config) {
	t.Helper()
	if testing.Short() {
		t.Skip("takes 3 seconds")
	}
	key := "learn-" + strconv.FormatUint(rand.Uint64(), 36)
	children := startChildren(t, cfg, t.Name(), 3)
	now, err := cfg.Now()
	require.NoError(t, err, "the backend's clock")
	dropAt, until := now.Add(time.Second), now.Add(time.Second+learnJudged)
	for i, ch := range children {
		at := int64(0)
		if i == 0 {
			at = dropAt.UnixNano()
		}
		fmt.Fprintf(ch.stdin, "learn %s %d %d\n", key, until.UnixNano(), at)
		ch.stdin.Close()
	}
	var (
		starts []backendtest.Start
		drop   int64 // the backend's clock when the drop was learned
	)
	for i, ch := range children {
		other := ""
		for line := range ch.lines {
			var s backendtest.Start
			if _, err := fmt.Sscanf(line, "start %d %d", &s.At, &s.Cost); err == nil {
				starts = append(starts, s)
			} else if _, err := fmt.Sscanf(line, "dropped %d", &drop); err != nil {
				other += line + "\n"
			}
		}
		require.NoError(t, ch.cmd.Wait(), "process %d:\n%s%s", i, other, ch.out.String())
	}
	require.NotZero(t, drop, "process 0 never reported its throttle")
	var before, after []backendtest.Start
	for _, s := range starts {
		switch {
		case s.At < drop:
			before = append(before, s)
		case s.At >= drop+int64(100*time.Millisecond): // bookings ahead decided before the drop
			after = append(after, s)
		}
	}
	require.NoError(t, backendtest.Check(LearnLimit, starts), "the ceiling")
	assert.NoError(t, backendtest.Check(learnBound, after), "the starts after one process's throttle: the others did not slow down")
	// The check after the drop proves something only if the processes
	// ran at the limit's rate before it.
	assert.Error(t, backendtest.Check(learnBound, before), "the processes never reached %v before the drop", learnBound)
	t.Logf("3 processes: %d starts before the throttle, %d in the %v after it", len(before), len(after), learnJudged-100*time.Millisecond)
}

// LearnChild is the body of a child of Learns, on s: it admits as Child
// does, and the child told to reports a throttle of its latest admission
// once the backend's clock passes the time it was given, and prints
// "dropped NOW".
func LearnChild(t *testing.T, s driver.LearnBackend) {
	fmt.Println("ready")
	var (
		key           string
		until, dropAt int64
	)
	_, err := fmt.Scanf("learn %s %d %d\n", &key, &until, &dropAt)
	require.NoError(t, err)
	lim := backendtest.Limit(LearnLimit)
	var dropped atomic.Bool
	everyGoroutine(func(say func(format string, args ...any)) {
		req := driver.Request{Key: key, Limit: lim, Cost: 1, MaxWait: 100 * time.Millisecond}
		for {
			d, err := s.Admit(context.Background(), req)
			if !assert.NoError(t, err) || d.Now >= until {
				return
			}
			if !d.Allowed {
				time.Sleep(min(d.Wait-req.MaxWait, 20*time.Millisecond))
				continue
			}
			say("start %d %d", d.Start(), req.Cost)
			if dropAt != 0 && d.Now >= dropAt && dropped.CompareAndSwap(false, true) {
				_, err := s.Learn(context.Background(), key, lim, driver.Feedback{Throttled: true, Gen: d.Booking.Gen})
				assert.NoError(t, err)
				say("dropped %d", d.Now)
			}
			time.Sleep(d.Wait)
		}
	})
}
