package netfault_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/leakybucket/leakybucket/internal/netfault"
)

// retryInterval is the stores' documented default RetryInterval, which
// the dispatcher tests keep, and dispatcherBackoff the longest a
// Dispatcher waits before it asks again for a key whose admission failed.
const (
	retryInterval      = 500 * time.Millisecond
	dispatcherBackoff  = time.Second
	recoverySlack      = 15 * time.Second
	faultLength        = 600 * time.Millisecond
	jobsBeforeTheFault = 500
	jobsAfterRecovery  = 200
)

// TestDispatcher runs a Dispatcher on a store whose connections to the
// server are reset, or fall into a black hole, for 600ms while 500 jobs
// on four keys are in flight, under each failure policy (see backends),
// with the store's default RetryInterval, then heals the network and
// submits jobs until the server admits again, and 200 more. What must
// hold:
//   - every job is resolved exactly once, with its handler's result: the
//     handler ran once for each job, none twice, none lost (a future
//     resolved twice panics), and Stats count every job once;
//   - what the server admitted (less what the dispatcher gave back), before,
//     during and after the fault, conforms to the limit on the server's
//     clock: the fault lost none of its state; so do the local buckets'
//     admissions under FailLocal;
//   - under FailClosed only the server admitted, and Stats report the
//     failures as matchable errors; FailOpen and FailLocal admitted
//     during the fault;
//   - the server admits again within RetryInterval of the fault's end,
//     plus the dispatcher's backoff for a key whose admission failed (up
//     to 1s), a round trip, and 15s of slack: the figure is logged (up to
//     about a second; once 9.7s, for PostgreSQL with 20 processes runnable
//     on the machine's 2 cores, where its round trips of 300ms time out),
//     and the bound only catches a store that does not come back;
//   - the client's connections: at most its pool's size once the jobs
//     are done, none left on the server once the store and the client
//     are closed. (No goroutine is left either: goleak, in TestMain.)
//
// No check reads the handler's clock: on a loaded machine its starts
// carry the scheduler's delays, which TestSlowNetwork allows for.
func TestDispatcher(t *testing.T) {
	for _, b := range backends {
		for _, f := range []netfault.Fault{netfault.Reset, netfault.BlackHole} {
			for _, policy := range b.policies {
				t.Run(b.name+"/"+f.Name+"/"+policy.String(), func(t *testing.T) {
					testDispatcher(t, b, f, policy)
				})
			}
		}
	}
}

func testDispatcher(t *testing.T, b backend, f netfault.Fault, policy failover.Policy) {
	s := b.open(t, options{policy: policy})
	w := watch(s.store)
	limit := bucket.PerSecond(200).WithBurst(3).WithQuota(60, 250*time.Millisecond)
	lim, err := bucket.NewLimiter(w, limit)
	require.NoError(t, err)
	js := newJobs(t, lim, dispatcher.WithQueue(2000))
	js.submit(t, jobsBeforeTheFault)

	time.Sleep(200 * time.Millisecond)
	injected := time.Now().UnixNano()
	require.NoError(t, s.proxy.Inject(f))
	time.Sleep(faultLength)
	healed := time.Now().UnixNano()
	w.after.Store(healed)
	s.proxy.Heal()
	// Jobs until the server admits one: under FailOpen the jobs left may
	// all have run during the fault.
	for w.first.Load() == 0 && time.Since(time.Unix(0, healed)) < retryInterval+dispatcherBackoff+recoverySlack+time.Second {
		js.submit(t, 1)
		time.Sleep(2 * time.Millisecond)
	}
	recovered := w.first.Load()
	js.submit(t, jobsAfterRecovery)
	st := js.finish(t)

	require.NotZero(t, recovered, "no admission by the server after the fault ended")
	took := time.Duration(recovered - healed)
	bound := retryInterval + dispatcherBackoff + recoverySlack
	assert.LessOrEqual(t, took, bound, "from the fault's end to the server's first admission")

	// What the server admitted, before the fault, during it (on its way
	// when it began) and after it, on its clock; what the local buckets
	// admitted, on theirs.
	for k := range keys {
		key := fmt.Sprint("tenant-", k)
		assert.NoError(t, backendtest.Check(limit, w.starts(w.server, key)), "admitted by the server, %s", key)
		assert.NoError(t, backendtest.Check(limit, w.starts(w.local, key)), "admitted by the local buckets, %s", key)
	}
	byServer, byLocal := w.count(w.server), w.count(w.local)
	switch policy {
	case failover.FailClosed:
		assert.Zero(t, byLocal+int(w.open.Load()), "FailClosed: admissions by the policy")
		assert.GreaterOrEqual(t, byServer, len(js.futures), "FailClosed: the server's admissions, want one a job at least")
		assert.NotZero(t, st.BackendErrors, "Stats.BackendErrors")
		assert.ErrorIs(t, st.LastBackendError, b.unavailable, "Stats.LastBackendError")
	case failover.FailOpen:
		assert.NotZero(t, w.open.Load(), "FailOpen: admissions by the policy")
	case failover.FailLocal:
		assert.NotZero(t, byLocal, "FailLocal: admissions by the local buckets")
	}
	assert.LessOrEqual(t, settleConns(t, s, maxConns), maxConns, "the server's connections from the client, after the jobs")
	s.close()
	assert.Zero(t, settleConns(t, s, 0), "the server's connections from the client, after Close")
	t.Logf("%d jobs, %d started during the fault; admissions: %d by the server, %d by the local buckets, %d open; %d backend errors; the server admitted again %v after the fault ended (bound %v)",
		len(js.futures), js.startedIn(injected, healed), byServer, byLocal, w.open.Load(), st.BackendErrors, took.Round(time.Millisecond), bound)
}
