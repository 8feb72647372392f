package coalesce_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/internal/coalesce"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A server answers each call with its request doubled, and records the
// requests of each round trip. A round trip waits for gate, if set, once
// it has taken the calls queued, or before if takeLate.
type server struct {
	mu       sync.Mutex
	rounds   [][]int
	gate     chan struct{}
	takeLate bool
	gone     []int
}

func (s *server) run(ctx context.Context, r *coalesce.Round[int, int]) {
	if !s.takeLate {
		r.Take()
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			for _, c := range r.Calls {
				c.Err = ctx.Err()
			}
			return
		}
	}
	if s.takeLate {
		r.Take()
	}
	var reqs []int
	for _, c := range r.Calls {
		reqs = append(reqs, c.Req)
		c.Ans = 2 * c.Req
	}
	s.mu.Lock()
	s.rounds = append(s.rounds, reqs)
	s.mu.Unlock()
}

func (s *server) giveBack(calls []*coalesce.Call[int, int]) {
	for _, c := range calls {
		s.gone = append(s.gone, c.Req)
	}
}

// newBatcher returns a Batcher running its round trips on s, detached
// from callers' contexts or not, closed at the end of the test.
func newBatcher(t *testing.T, s *server, trips, maxBatch int, detached bool) *coalesce.Batcher[int, int] {
	t.Helper()
	cfg := coalesce.Config[int, int]{Trips: trips, MaxBatch: maxBatch, Run: s.run}
	if detached {
		cfg.GiveBack = s.giveBack
	}
	b := coalesce.New(cfg)
	t.Cleanup(b.Close)
	return b
}

type answer struct{ ans, err any }

// do calls b.Do(ctx, req) on a goroutine and returns where its answer
// arrives.
func do(b *coalesce.Batcher[int, int], ctx context.Context, req int) chan answer {
	ch := make(chan answer, 1)
	go func() {
		ans, err := b.Do(ctx, req)
		ch <- answer{ans, err}
	}()
	return ch
}

// TestCallsShareRoundTrips: calls that arrive while the round trips are
// all in use go out together in the next, up to MaxBatch, in arrival
// order; a call that finds a round trip free runs at once.
func TestCallsShareRoundTrips(t *testing.T) {
	for _, detached := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			s := &server{gate: make(chan struct{})}
			b := newBatcher(t, s, 1, 3, detached)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var answers []chan answer
			answers = append(answers, do(b, ctx, 1))
			synctest.Wait()
			require.Equal(t, 1, b.Running())
			for req := 2; req <= 6; req++ {
				answers = append(answers, do(b, ctx, req))
				synctest.Wait()
			}
			assert.Equal(t, 5, b.Len())
			close(s.gate)
			for i, ch := range answers {
				assert.Equal(t, answer{2 * (i + 1), nil}, <-ch, "call %d", i+1)
			}
			assert.Equal(t, [][]int{{1}, {2, 3, 4}, {5, 6}}, s.rounds, "detached %v", detached)
		})
	}
}

// TestQueuedCallerLeaves: a caller whose context ends while its call is
// queued returns ctx's error at once, and no round trip carries its call.
func TestQueuedCallerLeaves(t *testing.T) {
	for _, detached := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			s := &server{gate: make(chan struct{})}
			b := newBatcher(t, s, 1, 10, detached)
			first := do(b, t.Context(), 1)
			synctest.Wait()
			ctx, cancel := context.WithCancel(t.Context())
			leaving := do(b, ctx, 2)
			synctest.Wait()
			kept := do(b, t.Context(), 3)
			synctest.Wait()
			cancel()
			assert.Equal(t, answer{0, context.Canceled}, <-leaving)
			close(s.gate)
			assert.Equal(t, answer{2, nil}, <-first)
			assert.Equal(t, answer{6, nil}, <-kept)
			assert.Equal(t, [][]int{{1}, {3}}, s.rounds)
			assert.Empty(t, s.gone)
		})
	}
}

// TestAttachedRoundTripRunsUnderCallersContext: without GiveBack, a round
// trip runs under the context of the caller that runs it; when that ends
// while the round trip waits, the others stay queued and the first of them
// runs the next round trip under its own context; the calls queued join
// when the round trip takes them, not before.
func TestAttachedRoundTripRunsUnderCallersContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &server{gate: make(chan struct{}), takeLate: true}
		b := newBatcher(t, s, 1, 10, false)
		ctx, cancel := context.WithCancel(t.Context())
		leader := do(b, ctx, 1)
		synctest.Wait()
		next := do(b, t.Context(), 2)
		synctest.Wait()
		leaving, leave := context.WithCancel(t.Context())
		gone := do(b, leaving, 3)
		synctest.Wait()
		last := do(b, t.Context(), 4)
		synctest.Wait()
		cancel()
		assert.Equal(t, answer{0, context.Canceled}, <-leader)
		synctest.Wait() // call 2 now runs a round trip, waiting at the gate
		leave()
		assert.Equal(t, answer{0, context.Canceled}, <-gone, "a call queued behind a waiting round trip leaves")
		close(s.gate)
		assert.Equal(t, answer{4, nil}, <-next)
		assert.Equal(t, answer{8, nil}, <-last)
		assert.Equal(t, [][]int{{2, 4}}, s.rounds)
	})
}

// TestDetachedCallerLeavesInFlight: with GiveBack, a caller whose context
// ends while its call is in a round trip returns at once; the round trip
// answers the others, then gives its call to GiveBack.
func TestDetachedCallerLeavesInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &server{gate: make(chan struct{})}
		b := newBatcher(t, s, 1, 10, true)
		ctx, cancel := context.WithCancel(t.Context())
		leaving := do(b, ctx, 1)
		synctest.Wait()
		cancel()
		assert.Equal(t, answer{0, context.Canceled}, <-leaving)
		close(s.gate)
		synctest.Wait()
		assert.Equal(t, [][]int{{1}}, s.rounds)
		assert.Equal(t, []int{1}, s.gone)
	})
}

// TestOwnRoundTrip: a caller whose context cannot end runs its round trip
// on its own goroutine; the calls queued meanwhile go out when it ends,
// whatever their contexts.
func TestOwnRoundTrip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &server{gate: make(chan struct{})}
		b := newBatcher(t, s, 1, 10, true)
		own := do(b, context.Background(), 1)
		synctest.Wait()
		queued := []chan answer{do(b, context.Background(), 2)}
		synctest.Wait()
		queued = append(queued, do(b, t.Context(), 3))
		synctest.Wait()
		close(s.gate)
		assert.Equal(t, answer{2, nil}, <-own)
		assert.Equal(t, answer{4, nil}, <-queued[0])
		assert.Equal(t, answer{6, nil}, <-queued[1])
		assert.Equal(t, [][]int{{1}, {2, 3}}, s.rounds)
	})
}

// TestTripsBoundRoundTrips: at most Trips round trips run at once; with
// -1 every call runs at once in a round trip of its own.
func TestTripsBoundRoundTrips(t *testing.T) {
	for _, tt := range []struct {
		trips, running, queued int
	}{
		{trips: 2, running: 2, queued: 2},
		{trips: -1, running: 4, queued: 0},
	} {
		synctest.Test(t, func(t *testing.T) {
			s := &server{gate: make(chan struct{})}
			b := newBatcher(t, s, tt.trips, 10, true)
			var answers []chan answer
			for req := 1; req <= 4; req++ {
				answers = append(answers, do(b, t.Context(), req))
				synctest.Wait()
			}
			assert.Equal(t, tt.running, b.Running(), "Trips %d: round trips running", tt.trips)
			assert.Equal(t, tt.queued, b.Len(), "Trips %d: calls queued", tt.trips)
			close(s.gate)
			for i, ch := range answers {
				assert.Equal(t, answer{2 * (i + 1), nil}, <-ch)
			}
		})
	}
}

// TestClose: Close waits for the round trips running, answers the calls
// queued with bucket.ErrClosed, and later calls get it too.
func TestClose(t *testing.T) {
	for _, detached := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			s := &server{gate: make(chan struct{})}
			cfg := coalesce.Config[int, int]{Trips: 1, MaxBatch: 10, Run: func(ctx context.Context, r *coalesce.Round[int, int]) {
				r.Calls[0].Ans = 2 * r.Calls[0].Req // takes none
				<-s.gate
			}}
			if detached {
				cfg.GiveBack = s.giveBack
			}
			b := coalesce.New(cfg)
			first := do(b, t.Context(), 1)
			synctest.Wait()
			queued := do(b, t.Context(), 2)
			synctest.Wait()
			closed := make(chan struct{})
			go func() { b.Close(); close(closed) }()
			synctest.Wait()
			select {
			case <-closed:
				t.Fatal("Close returned while a round trip ran")
			default:
			}
			close(s.gate)
			<-closed
			assert.Equal(t, answer{2, nil}, <-first)
			assert.Equal(t, answer{0, bucket.ErrClosed}, <-queued)
			_, err := b.Do(t.Context(), 3)
			assert.ErrorIs(t, err, bucket.ErrClosed)
		})
	}
}

// TestCallsAccountedUnderChurn: many callers, a third of whose contexts
// end at random moments, through attached and detached Batchers: every
// request a round trip carries is answered to its caller or given back,
// never both, never twice, and never carried twice; a caller gets its own
// answer (a Call reused while held would carry another's request).
func TestCallsAccountedUnderChurn(t *testing.T) {
	for _, detached := range []bool{false, true} {
		for _, trips := range []int{1, 2, -1} {
			t.Run(fmt.Sprintf("detached=%v/trips=%d", detached, trips), func(t *testing.T) {
				testChurn(t, detached, trips)
			})
		}
	}
}

func testChurn(t *testing.T, detached bool, trips int) {
	var (
		mu       sync.Mutex
		carried  = map[int]int{}
		answered = map[int]int{}
		gone     = map[int]int{}
	)
	cfg := coalesce.Config[int, int]{
		Trips:    trips,
		MaxBatch: 7,
		Run: func(ctx context.Context, r *coalesce.Round[int, int]) {
			runtime.Gosched()
			r.Take()
			runtime.Gosched()
			mu.Lock()
			for _, c := range r.Calls {
				carried[c.Req]++
			}
			mu.Unlock()
			for _, c := range r.Calls {
				c.Ans = 2 * c.Req
			}
			runtime.Gosched()
		},
	}
	if detached {
		cfg.GiveBack = func(calls []*coalesce.Call[int, int]) {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range calls {
				assert.Equal(t, 2*c.Req, c.Ans, "given back unanswered")
				gone[c.Req]++
			}
		}
	}
	b := coalesce.New(cfg)
	const callers, calls = 16, 400
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for i := range calls {
				req := g*calls + i
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if rng.IntN(3) == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(50))*time.Microsecond)
				}
				ans, err := b.Do(ctx, req)
				cancel()
				switch {
				case err == nil:
					assert.Equal(t, 2*req, ans, "answer of %d", req)
					mu.Lock()
					answered[req]++
					mu.Unlock()
				case errors.Is(err, context.DeadlineExceeded):
				default:
					assert.NoError(t, err)
				}
			}
		})
	}
	wg.Wait()
	b.Close()
	mu.Lock()
	defer mu.Unlock()
	for req, n := range carried {
		require.Equal(t, 1, n, "request %d carried %d times", req, n)
		// Attached, a caller whose call is taken waits for its answer.
		require.Equal(t, 1, answered[req]+gone[req], "request %d: answered %d, given back %d", req, answered[req], gone[req])
	}
	for req := range answered {
		require.Equal(t, 1, carried[req], "request %d answered but carried %d times", req, carried[req])
	}
	for req := range gone {
		require.Equal(t, 1, carried[req], "request %d given back but carried %d times", req, carried[req])
	}
	assert.Zero(t, b.Len(), "calls queued after Close")
	assert.Zero(t, b.Running(), "round trips running after Close")
	t.Logf("carried %d, answered %d, given back %d", len(carried), len(answered), len(gone))
}
