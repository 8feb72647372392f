package backendtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// testConcurrentOneKey: many callers on one key, through two handles,
// never start more than the rate allows.
func (s *suite) testConcurrentOneKey(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerSecond(200).WithBurst(5)
	starts := s.hammer(t, b, []string{key}, lim, 16, 400*time.Millisecond, 3, 20*time.Millisecond, 20)
	checkStarts(t, lim, key, starts[key], 20)
}

// testConcurrentQuotas: the same under two quotas that bind before the
// rate does.
func (s *suite) testConcurrentQuotas(t *testing.T) {
	b := s.cfg.New(t)
	key := s.key(t, "k")
	lim := bucket.PerSecond(2000).WithBurst(10).WithQuota(40, 100*time.Millisecond).WithQuota(90, 300*time.Millisecond)
	starts := s.hammer(t, b, []string{key}, lim, 8, 500*time.Millisecond, 2, 10*time.Millisecond, 90)
	checkStarts(t, lim, key, starts[key], 90)
}

// testConcurrentManyKeys: callers spread over many keys keep each key
// within its own limit.
func (s *suite) testConcurrentManyKeys(t *testing.T) {
	b := s.cfg.New(t)
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = s.key(t, fmt.Sprint("tenant-", i))
	}
	lim := bucket.PerSecond(100).WithBurst(2).WithQuota(15, 200*time.Millisecond)
	starts := s.hammer(t, b, keys, lim, 8, 400*time.Millisecond, 2, 10*time.Millisecond, 2)
	for _, k := range keys {
		checkStarts(t, lim, k, starts[k], 2)
	}
}

// hammer runs workers goroutines, half of them on a peer handle, that
// admit random costs up to maxCost for every key, with random maxWaits up
// to maxWait, until the backend's clock has advanced by span and every
// key has had atLeast units admitted (or by 20 spans, or each worker has
// made 200,000 attempts), and returns the admitted starts by key: a slow
// backend on a busy machine gets the time to admit enough for the check
// to mean something. The first error or broken decision stops every
// worker and fails the test.
func (s *suite) hammer(t *testing.T, b driver.Backend, keys []string, lim bucket.Limit, workers int, span time.Duration, maxCost int64, maxWait time.Duration, atLeast int64) map[string][]Start {
	t.Helper()
	peer := s.peer(t, b)
	var (
		mu     sync.Mutex
		starts = make(map[string][]Start)
		units  = make(map[string]int64)
		short  atomic.Int64 // keys with fewer than atLeast units
	)
	short.Store(int64(len(keys)))
	clock := s.now(t, b)
	g, ctx := errgroup.WithContext(context.Background())
	for w := range workers {
		be := b
		if w%2 == 1 {
			be = peer
		}
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for n := range 200_000 {
				// Workers cycle through the keys from different places, so
				// that even a slow backend reaches every key.
				r := req(keys[(w*len(keys)/workers+n)%len(keys)], lim, 1+rng.Int64N(maxCost), 0)
				if maxWait > 0 && rng.IntN(2) == 0 {
					r.MaxWait = time.Duration(rng.Int64N(int64(maxWait)))
				}
				d, err := be.Admit(ctx, r)
				if err != nil {
					return fmt.Errorf("%s: %w", call(r), err)
				}
				if d.Allowed && (d.Wait < 0 || d.Wait > max(r.MaxWait, 0)) {
					return fmt.Errorf("%s booked %v ahead, want within [0, maxWait]", call(r), d.Wait)
				}
				if d.Allowed {
					mu.Lock()
					starts[r.Key] = append(starts[r.Key], Start{At: d.Start(), Cost: r.Cost})
					if before := units[r.Key]; before < atLeast && before+r.Cost >= atLeast {
						short.Add(-1)
					}
					units[r.Key] += r.Cost
					mu.Unlock()
				}
				if el := d.Now - clock; el > int64(span) && short.Load() == 0 || el > 20*int64(span) {
					return nil
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	return starts
}

// checkStarts checks key's admitted starts with the reference checker,
// and that there were at least atLeast units of them for the check to
// mean something.
func checkStarts(t *testing.T, lim bucket.Limit, key string, starts []Start, atLeast int64) {
	t.Helper()
	var units int64
	for _, s := range starts {
		units += s.Cost
	}
	assert.GreaterOrEqual(t, units, atLeast, "key %q: units admitted, too few for a meaningful check", key)
	assert.NoError(t, Check(lim, starts), "key %q", key)
}
