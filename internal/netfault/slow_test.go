package netfault_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/leakybucket/leakybucket/internal/netfault"
)

// slowLimit is the limit of the slow network tests' keys: an emission
// interval (50ms) longer than twice the latency's jitter, so that the
// jitter of the replies moves a start by less than a unit.
var slowLimit = bucket.PerSecond(20).WithBurst(2)

// TestSlowNetwork slows every connection to the server, by 50ms ± 10ms
// of latency on its replies, and then by a cap of 16 kB/s each way,
// while 8 goroutines admit through Store.Admit (booking up to 200ms
// ahead) on two keys and a Dispatcher runs 20 jobs on each of four
// others, under FailClosed, with timeouts of 1s: above the slowest round
// trip these faults make (a new PostgreSQL connection takes three before
// its first statement's answer). What the server admitted conforms
// exactly, on its clock; the handler's starts conform with a unit of
// burst for the replies' jitter (and the workers' scheduling); every job
// runs once. A slow network is not an outage, but a round trip that
// outlasts the timeout fails as one (ErrUnavailable, which the
// dispatcher retries), and nothing else may.
func TestSlowNetwork(t *testing.T) {
	for _, b := range backends {
		for _, f := range []netfault.Fault{netfault.Latency(50*time.Millisecond, 10*time.Millisecond), netfault.Bandwidth(16)} {
			t.Run(b.name+"/"+f.Name, func(t *testing.T) { testSlowNetwork(t, b, f) })
		}
	}
}

func testSlowNetwork(t *testing.T, b backend, f netfault.Fault) {
	s := b.open(t, options{policy: failover.FailClosed, timeout: time.Second})
	require.NoError(t, s.proxy.Inject(f))
	w := watch(s.store)

	// The dispatcher's jobs.
	lim, err := bucket.NewLimiter(w, slowLimit)
	require.NoError(t, err)
	js := newJobs(t, lim)
	began := time.Now()
	js.submit(t, 20*keys)

	// The direct calls, meanwhile.
	var (
		stop   atomic.Bool
		wg     sync.WaitGroup
		mu     sync.Mutex
		direct = make([][]backendtest.Start, 2)
		errs   []error
		calls  atomic.Int64
	)
	defer func() { // once the checks are done, or one fails
		stop.Store(true)
		wg.Wait()
	}()
	for g := range 8 {
		wg.Go(func() {
			k := g % len(direct)
			req := driver.Request{Key: fmt.Sprint("direct-", k), Limit: backendtest.Limit(slowLimit), Cost: 1, MaxWait: 200 * time.Millisecond}
			for !stop.Load() {
				dec, err := s.store.Admit(context.Background(), req)
				calls.Add(1)
				switch {
				case err != nil:
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					time.Sleep(10 * time.Millisecond)
				case dec.Allowed:
					mu.Lock()
					direct[k] = append(direct[k], backendtest.Start{At: dec.Start(), Cost: 1})
					mu.Unlock()
					time.Sleep(dec.Wait)
				default:
					time.Sleep(min(dec.Wait-req.MaxWait, 50*time.Millisecond))
				}
			}
		})
	}

	st := js.finish(t)
	took := time.Since(began)
	stop.Store(true)
	wg.Wait()
	if st.BackendErrors > 0 {
		assert.ErrorIs(t, st.LastBackendError, b.unavailable, "Stats.LastBackendError")
	}
	for _, err := range errs {
		require.ErrorIs(t, err, b.unavailable, "a direct call's error")
	}

	for k := range keys {
		assert.NoError(t, backendtest.Check(slowLimit.WithBurst(slowLimit.Burst+1), js.startsOf(k)), "handler starts, tenant-%d", k)
		assert.NoError(t, backendtest.Check(slowLimit, w.starts(w.server, fmt.Sprint("tenant-", k))), "admitted by the server, tenant-%d", k)
	}
	admitted := 0
	for k, ss := range direct {
		assert.NoError(t, backendtest.Check(slowLimit, ss), "direct-%d", k)
		admitted += len(ss)
	}
	assert.NotZero(t, admitted, "direct admissions")
	// The dispatcher's 20 jobs a key need 0.9s at 20/s with a burst of 2.
	t.Logf("%s: the dispatcher's %d jobs took %v; %d direct calls, %d admitted, %d errors; dispatcher: %d round trips, %d backend errors, %d requeued",
		f.Name, len(js.futures), took.Round(time.Millisecond), calls.Load(), admitted, len(errs), st.RoundTrips, st.BackendErrors, st.Requeued)
}
