package dispatcher_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// gate is a handler whose runs block until released one at a time, and
// which counts how many run at once per key.
type gate struct {
	mu      sync.Mutex
	running map[string]int
	peak    map[string]int
	started chan task
	release chan struct{}
}

func newGate() *gate {
	return &gate{running: map[string]int{}, peak: map[string]int{}, started: make(chan task, 100), release: make(chan struct{})}
}

func (g *gate) handle(ctx context.Context, tk task) (int, error) {
	g.mu.Lock()
	g.running[tk.key]++
	g.peak[tk.key] = max(g.peak[tk.key], g.running[tk.key])
	g.mu.Unlock()
	g.started <- tk
	defer func() {
		g.mu.Lock()
		g.running[tk.key]--
		g.mu.Unlock()
	}()
	select {
	case <-g.release:
		return tk.n, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// TestInflightCap: a key capped at 2 in flight runs 2 jobs at once, its
// others wait in the scheduler while another key's jobs take the free
// workers (no head-of-line blocking), and each run's end starts the key's
// next job at once.
func TestInflightCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		lim := newLimiter(t, bucket.PerSecond(1000).WithBurst(100).WithInflight(2))
		d := newDispatcher(t, g.handle, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithWorkers(8))
		var fs []*dispatcher.Future[int]
		for i := range 6 {
			f, err := d.Submit(context.Background(), task{"A", i})
			require.NoError(t, err)
			fs = append(fs, f)
		}
		for i := range 3 {
			f, err := d.Submit(context.Background(), task{"B", i})
			require.NoError(t, err)
			fs = append(fs, f)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Len(t, g.started, 4, "handlers started: A's 2 under its cap and B's 2, with 8 workers")
		st := d.Stats()
		assert.Equal(t, int64(2), st.Running-2, "A's handlers running")
		assert.Positive(t, st.AtCap, "Stats.AtCap with A at its cap")

		for range 7 { // the rest: each release lets the next in, at once
			start := time.Now()
			g.release <- struct{}{}
			synctest.Wait()
			assert.Equal(t, start, time.Now(), "a job waited past a release for its lease")
		}
		for range 2 {
			g.release <- struct{}{}
		}
		for _, f := range fs {
			_, err := f.Wait(context.Background())
			require.NoError(t, err)
		}
		assert.Equal(t, 2, g.peak["A"], "A's handlers at once, cap 2")
	})
}

// TestInflightLeasesGivenBack: whatever becomes of a capped job — run,
// put back after a retry-after, cancelled while booked, resolved by a
// hard stop while queued or running — its lease is given back: the
// store admits the cap's full count at once afterwards.
func TestInflightLeasesGivenBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store, err := memstore.New(memstore.Options{})
		require.NoError(t, err)
		defer store.Close()
		capped := bucket.PerSecond(1000).WithBurst(10).WithInflight(2)
		lim, err := bucket.NewLimiter(store, capped)
		require.NoError(t, err)
		var retried atomic.Bool
		block := make(chan struct{})
		d, err := dispatcher.New(func(ctx context.Context, tk task) (int, error) {
			switch tk.n {
			case 0:
				if !retried.Swap(true) {
					return 0, &retryAfterError{delay: 100 * time.Millisecond}
				}
			case 1:
				<-ctx.Done() // runs until the hard stop
				return 0, ctx.Err()
			case 2:
				<-block
			}
			return tk.n, nil
		}, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithWorkers(4))
		require.NoError(t, err)
		r0, err := d.Do(context.Background(), task{"A", 0})
		require.NoError(t, err, "the job put back after a retry-after")
		assert.Equal(t, 0, r0)
		_, err = d.Submit(context.Background(), task{"A", 1})
		require.NoError(t, err)
		f2, err := d.Submit(context.Background(), task{"A", 2})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		f3, err := d.Submit(ctx, task{"A", 3}) // waits at the cap, 1 and 2 running
		require.NoError(t, err)
		synctest.Wait()
		cancel()
		_, err = f3.Wait(context.Background())
		assert.ErrorIs(t, err, context.Canceled)
		close(block)
		_, err = f2.Wait(context.Background())
		require.NoError(t, err)

		sctx, scancel := context.WithCancel(context.Background())
		scancel() // a hard stop: job 1 still runs
		assert.ErrorIs(t, d.Shutdown(sctx), context.Canceled)

		acquire, err := bucket.NewLimiter(store, capped.WithBurst(100))
		require.NoError(t, err)
		for i := range 2 {
			short, c := context.WithTimeout(context.Background(), time.Millisecond)
			ls, err := acquire.Acquire(short, "A", 1)
			c()
			require.NoError(t, err, "lease %d of 2 after the dispatcher stopped: one was kept", i+1)
			defer ls.Release(context.Background())
		}
	})
}

// TestInflightRenewed: a handler running ten times the lease TTL keeps
// its lease: nothing else gets in meanwhile.
func TestInflightRenewed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store, err := memstore.New(memstore.Options{})
		require.NoError(t, err)
		defer store.Close()
		capped := bucket.PerSecond(1000).WithInflight(1)
		lim, err := bucket.NewLimiter(store, capped)
		require.NoError(t, err)
		running := make(chan struct{})
		d := newDispatcher(t, func(ctx context.Context, tk task) (int, error) {
			close(running)
			time.Sleep(10 * time.Second)
			return 0, nil
		}, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithLeaseTTL(time.Second))
		f, err := d.Submit(context.Background(), task{"A", 0})
		require.NoError(t, err)
		<-running
		other, err := bucket.NewLimiter(store, capped)
		require.NoError(t, err)
		short, cancel := context.WithTimeout(context.Background(), 9*time.Second)
		_, err = other.Acquire(short, "A", 1)
		cancel()
		assert.ErrorIs(t, err, context.DeadlineExceeded, "a lease taken while the handler ran with its own renewed")
		_, err = f.Wait(context.Background())
		require.NoError(t, err)
		assert.Zero(t, d.Stats().LeasesLost)
	})
}

// TestInflightShared: three dispatchers on one store, as three processes
// on one backend, never run more than the cap of one key's handlers at
// once, judged from the intervals the handlers report.
func TestInflightShared(t *testing.T) {
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	defer store.Close()
	const cap = 3
	var (
		mu    sync.Mutex
		spans []backendtest.Interval
	)
	h := func(ctx context.Context, tk task) (int, error) {
		from := time.Now()
		time.Sleep(time.Duration(tk.n%4) * 100 * time.Microsecond)
		to := time.Now()
		mu.Lock()
		spans = append(spans, backendtest.Interval{From: from, To: to})
		mu.Unlock()
		return tk.n, nil
	}
	var wg sync.WaitGroup
	for range 3 {
		lim, err := bucket.NewLimiter(store, bucket.PerSecond(1_000_000).WithBurst(1000).WithInflight(cap))
		require.NoError(t, err)
		d := newDispatcher(t, h, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithWorkers(8))
		wg.Go(func() {
			jobs := make([]task, 300)
			for i := range jobs {
				jobs[i] = task{"A", i}
			}
			for _, r := range d.DoAll(context.Background(), jobs) {
				assert.NoError(t, r.Err)
			}
		})
	}
	wg.Wait()
	assert.Len(t, spans, 900)
	assert.NoError(t, backendtest.CheckInflight(cap, spans))
}

// A capped limit on a backend that keeps no leases fails its jobs with
// ErrNoLeases, at once.
func TestInflightNoLeases(t *testing.T) {
	lim, err := bucket.NewLimiter(&decideOnly{}, bucket.PerSecond(10), bucket.WithKeyLimit(func(string) bucket.Limit {
		return bucket.PerSecond(10).WithInflight(1)
	}))
	require.NoError(t, err)
	d := newDispatcher(t, double, nil, dispatcher.WithLimiter(lim))
	_, err = d.Do(context.Background(), 1)
	assert.ErrorIs(t, err, bucket.ErrNoLeases, "Do with a capped key on a backend without leases")
}

// decideOnly is a backend built on driver.Decide alone, as one written
// before leases existed.
type decideOnly struct {
	mu    sync.Mutex
	state driver.State
}

func (b *decideOnly) Admit(_ context.Context, req driver.Request) (driver.Decision, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return driver.Decide(&b.state, &req, time.Nanosecond, time.Now().UnixNano())
}

func (b *decideOnly) Refund(context.Context, driver.Request, driver.Decision) error { return nil }

func (b *decideOnly) Pause(context.Context, string, time.Duration) error { return nil }

// TestInflightAndRate: a key with both a rate and a cap exceeds neither,
// and runs at the tighter of the two: 10/s with 2 in flight runs 2/s when
// each run takes a second (the cap binds), and 10/s when each takes 10ms
// (the rate binds).
func TestInflightAndRate(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  time.Duration
		want int // runs started in the first 10s
	}{
		{"cap binds", time.Second, 20},
		{"rate binds", 10 * time.Millisecond, 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				limit := bucket.PerSecond(10).WithInflight(2)
				var (
					mu      sync.Mutex
					running int
					peak    int
				)
				st := newStarts()
				d := newDispatcher(t, func(ctx context.Context, tk task) (int, error) {
					st.record(tk.key)
					mu.Lock()
					running++
					peak = max(peak, running)
					mu.Unlock()
					time.Sleep(tt.run)
					mu.Lock()
					running--
					mu.Unlock()
					return tk.n, nil
				}, taskKey, dispatcher.WithLimiter(newLimiter(t, limit)), dispatcher.WithWorkers(8))
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second-time.Nanosecond)
				defer cancel()
				jobs := make([]task, 200)
				for i := range jobs {
					jobs[i] = task{"A", i}
				}
				d.DoAll(ctx, jobs)
				st.check(t, "A", limit, tt.want)
				mu.Lock()
				defer mu.Unlock()
				assert.LessOrEqual(t, peak, 2, "handlers at once, cap 2")
			})
		})
	}
}
