package redisstore_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// failFastCluster returns a cluster client that fails fast, as
// docs/redis.md advises: one dial, one retry of a command (which follows
// a MOVED at once), a second's read timeout.
func failFastCluster(t *testing.T, addrs []string) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:         addrs,
		DialTimeout:   200 * time.Millisecond,
		DialerRetries: 1,
		MaxRedirects:  1,
		ReadTimeout:   time.Second,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// The failover test's load: each key asks for its next slot, as
// bucket.Limiter.Wait does, from a goroutine of its own. The healthy
// masters' keys (and the jobs') ask at 20/s, burst 20: a caller needs
// a round trip shorter than 50 ms to keep up, which a loaded machine
// under -race still gives, and one held up for up to 950 ms catches up,
// so that the rate measured is the store's. The failed master's keys ask
// at 100/s, burst 40, so that a short lag loses admissions, with a quota
// of 300 a minute, which they reach a second after the failover: a
// failover that outlasts a bucket's depth (the burst and a second booked
// ahead) loses nothing of its rate that matters, but what a replica
// missed of a quota is admitted again.
var (
	failoverLimit      = bucket.PerSecond(20).WithBurst(20)
	failoverQuotaLimit = bucket.PerSecond(100).WithBurst(40).WithQuota(300, time.Minute)
	// failoverLag is how long, in the lagging phase, the failed master's
	// replica stops receiving writes before the master dies.
	failoverLag = 150 * time.Millisecond
	// lagSlack is what the replication lag may be on a healthy link, and
	// after a cut: a write reaches the replica in the event loop's pass
	// that answers it, which a loaded machine may stretch to tens of
	// milliseconds.
	lagSlack = 50 * time.Millisecond
	// failoverNodeTimeout is the cluster's cluster-node-timeout: a dead
	// master is replaced between one and a few of them after its death.
	failoverNodeTimeout = time.Second
)

// TestClusterFailover kills a master of a Redis Cluster of 3 masters and
// 3 replicas under load, once per failure policy (a different master
// each time, one whose replica is still there), while 9 keys (3 per
// master) ask for admissions through Store.Admit and a Dispatcher runs
// jobs on 6 more, through AdmitBatch (see failoverLimit). It checks:
//
//   - the healthy masters' keys are decided by Redis at every call, and
//     from the kill until every key of the failed master is back on
//     Redis they are admitted, slot for slot (call.slot), at ≥ 95% of the
//     rate they reached in the second before the kill (what the machine
//     let them reach; both figures are logged);
//   - the failed master's keys get the policy's answer (FailClosed: an
//     error matching ErrUnavailable; FailOpen: admitted without a
//     booking; FailLocal: the local buckets) from the failure's detection
//     until the replica is promoted, and Redis's after, every key within
//     5 s of the promotion (RetryInterval 100ms; the figure is logged);
//   - leases follow their master: while it is down, a healthy key's
//     lease is renewed and released in Redis, the failed master's get the
//     policy's answer; after the promotion they are in Redis again;
//   - what the failover lost: each key of the failed master, judged with
//     backendtest.Check on the starts Redis admitted (before the kill, on
//     the old master, and after, on the new one), over-admits by no more
//     than the admissions the old master acknowledged that its replica
//     never received (found from the first booking on the new master),
//     and those are no more than the key's admissions in the replication
//     lag before the death: those decided from lagSlack before the kill,
//     or, in the FailClosed phase, where the replica's link is cut 150 ms
//     before the master dies, from lagSlack before the cut;
//   - every call returns once, and every job resolves once, successfully.
//
// It takes about 20 s (three failovers of 2–3 s at a node timeout of 1 s,
// and the load around them).
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster of 6 servers and fails 3 masters over")
	}
	c := redistest.StartClusterWith(t, redistest.ClusterOptions{Replicas: 1, NodeTimeout: failoverNodeTimeout})
	for i, policy := range []redisstore.FailurePolicy{redisstore.FailClosed, redisstore.FailOpen, redisstore.FailLocal} {
		ok := t.Run(policy.String(), func(t *testing.T) {
			testClusterFailover(t, c, c.Servers[i], policy, policy == redisstore.FailClosed)
		})
		if !ok {
			return // the next phase needs this one's promotion
		}
	}
}

// A call is one Admit of the load and its answer.
type call struct {
	d        driver.Decision
	err      error
	sent, at time.Time // when it was made, and returned
}

// Where a call's answer came from.
type answer int

const (
	fromRedis answer = iota
	fromLocal        // FailLocal's buckets
	fromOpen         // FailOpen
	failed           // an error
	refused          // by Redis or the local buckets: a refusal does not say
)

// slot returns, in Unix ns, the time in its key's schedule (of limit
// lim) of a unit Redis admitted: its start if the caller was on time,
// else earlier. A
// caller that keeps up runs its bucket full, and each admission moves the
// key's theoretical arrival time (in Redis's µs ticks) one interval on,
// whether its caller asked on time or up to the burst's depth late (it
// catches up with back-to-back admissions); so a key's units fill every
// slot of a window unless something held it back longer than that. The
// units admitted in a window's slots measure its rate, whatever the
// machine did to the callers' timers at the window's edges.
func (c call) slot(lim bucket.Limit) int64 {
	return c.d.Booking.TAT*int64(time.Microsecond) - lim.Burst*int64(lim.Interval())
}

func (c call) from() answer {
	switch {
	case c.err != nil:
		return failed
	case !c.d.Allowed:
		return refused
	case c.d.Booking.TAT > 0:
		return fromRedis
	case c.d.Booking.TAT < 0:
		return fromLocal
	}
	return fromOpen
}

// A loadKey is one key of the load, the calls of its goroutine, and
// whether the failover has come to it.
type loadKey struct {
	name    string
	master  *redistest.Server
	limit   bucket.Limit
	calls   []call
	down    atomic.Bool // a call got the policy's answer
	resumed atomic.Bool // then Redis answered again
}

func testClusterFailover(t *testing.T, c *redistest.Cluster, victim *redistest.Server, policy redisstore.FailurePolicy, lag bool) {
	client := failFastCluster(t, c.Addrs())
	s := newStore(t, client, redisstore.Options{FailurePolicy: policy, RetryInterval: 100 * time.Millisecond})
	// Load the slot map and dial every master before the clock starts.
	require.NoError(t, client.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		return m.Ping(ctx).Err()
	}))
	masters, err := c.Masters()
	require.NoError(t, err)
	require.Len(t, masters, 3)
	require.Contains(t, masters, victim)

	keys := keysOn(t, c, s, "load-", masters, 3)
	jobKeys := keysOn(t, c, s, "job-", masters, 2)
	leaseKeys := keysOn(t, c, s, "lease-", masters, 1)

	ctx := context.Background()
	var (
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopLoad) // if t fails before the end
	for _, k := range keys {
		k.limit = failoverLimit
		if k.master == victim {
			k.limit = failoverQuotaLimit
		}
		T := k.limit.Interval()
		wg.Go(func() {
			req := driver.Request{Key: k.name, Limit: backendtest.Limit(k.limit), Cost: 1, MaxWait: time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				sent := time.Now()
				d, err := s.Admit(ctx, req)
				cl := call{d, err, sent, time.Now()}
				k.calls = append(k.calls, cl)
				switch cl.from() {
				case fromRedis:
					if k.down.Load() {
						k.resumed.Store(true)
					}
				case refused:
				default:
					k.down.Store(true)
				}
				// Until the start, as Limiter.Wait; FailClosed and FailOpen
				// answer at once, and a quota's refusal waits long.
				wait := d.Wait
				switch cl.from() {
				case failed, fromOpen:
					wait = T
				case refused:
					wait = min(wait, T)
				}
				select {
				case <-stop:
					return
				case <-time.After(wait):
				}
			}
		})
	}
	jobs, futures := failoverJobs(t, s, jobKeys, stop, &wg)
	t.Cleanup(func() { // if t fails before the end
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		jobs.Shutdown(ctx)
	})

	// The second before the kill (from when every key has spent its
	// burst) is the rate's baseline: what the machine lets the load reach.
	time.Sleep(500 * time.Millisecond)
	base := time.Now()

	// Leases on a healthy master and on the victim, taken well before the
	// kill: replicated.
	capped := backendtest.Limit(failoverLimit.WithInflight(2))
	leases := map[bool]driver.LeaseRef{} // by whether on the victim
	ids := driver.NewLeaseIDs()
	for _, k := range leaseKeys {
		if _, ok := leases[k.master == victim]; ok {
			continue
		}
		l := driver.LeaseRef{Key: k.name, ID: ids.Next()}
		d, err := s.Admit(ctx, driver.Request{Key: l.Key, Limit: capped, Cost: 1, Lease: l.ID, LeaseTTL: time.Minute})
		require.NoError(t, err, "capped Admit of %s", l.Key)
		require.True(t, d.Allowed, "capped Admit of %s", l.Key)
		leases[k.master == victim] = l
	}

	time.Sleep(time.Second)

	cut := time.Now()
	if lag {
		require.NoError(t, c.StallReplicas(victim))
		time.Sleep(failoverLag)
	}
	killed := time.Now()
	require.NoError(t, victim.Kill())
	dead := time.Now() // Kill waits for the process to end

	// Wait for the store to find the victim down, then check leases
	// before its replica can have been promoted (a node timeout at least).
	waitFor(t, 5*time.Second, "a call on the failed master answered by the policy", func() bool {
		for _, k := range keys {
			if k.master == victim && k.down.Load() {
				return true
			}
		}
		return false
	})
	checkLeasesDown(t, c, s, policy, victim, leases[false], leases[true], capped)

	promoted, err := c.WaitPromoted(victim, 30*time.Second)
	require.NoError(t, err)
	promotedAt := time.Now()
	waitFor(t, 5*time.Second, "every key of the failed master back on Redis", func() bool {
		for _, k := range keys {
			if k.master == victim && !k.resumed.Load() {
				return false
			}
		}
		return true
	})
	resumed := time.Now()
	time.Sleep(1500 * time.Millisecond) // the failed master's keys reach their quota
	stopLoad()

	// After the promotion the victim's lease is in Redis again.
	lost, err := s.Renew(ctx, []driver.LeaseRef{leases[true]}, time.Minute)
	assert.NoError(t, err, "Renew of the failed master's lease after the promotion")
	assert.Empty(t, lost, "Renew of the failed master's lease after the promotion: want it held by the new master")
	assert.NoError(t, s.Release(ctx, []driver.LeaseRef{leases[true]}), "Release of the failed master's lease after the promotion")

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, jobs.Shutdown(sctx), "Shutdown: jobs left unresolved")
	for i, f := range *futures {
		_, err := f.Result()
		assert.NoError(t, err, "job %d", i)
	}
	st := jobs.Stats()
	assert.Equal(t, int64(len(*futures)), st.Succeeded, "jobs succeeded, of %d submitted", len(*futures))

	// Judge the calls.
	var (
		healthyUnits, healthyKeys int
		baseUnits                 int           // the healthy keys' in the baseline
		slowest, slowestAt        time.Duration // of the healthy keys' calls meanwhile, and when it was made
		window                    = resumed.Sub(killed)
	)
	for _, k := range keys {
		if k.master != victim {
			healthyKeys++
			for i, cl := range k.calls {
				if !assert.Equal(t, fromRedis, cl.from(), "%s (healthy master), call %d at kill%+v: %+v, %v", k.name, i, cl.at.Sub(killed), cl.d, cl.err) {
					break
				}
				switch at := cl.slot(k.limit); {
				case at >= base.UnixNano() && at < cut.UnixNano():
					baseUnits++
				case at >= killed.UnixNano() && at < resumed.UnixNano():
					healthyUnits++
				}
			}
			var starts []backendtest.Start
			for _, cl := range k.calls {
				starts = append(starts, backendtest.Start{At: cl.d.Start(), Cost: 1})
				if cl.at.After(killed) && cl.sent.Before(resumed) {
					if d := cl.at.Sub(cl.sent); d > slowest {
						slowest, slowestAt = d, cl.sent.Sub(killed)
					}
				}
			}
			assert.NoError(t, backendtest.Check(k.limit, starts), "%s (healthy master)", k.name)
			continue
		}
		judgeFailedKey(t, k, policy, killed, dead, cut, lag, resumed)
	}
	ofRate := func(units int, d time.Duration) float64 {
		return float64(units) / (d.Seconds() * float64(healthyKeys) * float64(failoverLimit.Rate))
	}
	rate, baseRate := ofRate(healthyUnits, window), ofRate(baseUnits, cut.Sub(base))
	assert.GreaterOrEqual(t, rate, 0.95*min(baseRate, 1),
		"healthy masters' keys: units admitted in their slots from the kill to the failed master's keys' return, against their rate (%.3f of it before the kill)", baseRate)
	t.Logf("%s: replica %s promoted %v after the kill, keys back on Redis %v after it; healthy keys admitted at %.3f of their rate meanwhile (%d units in %v over %d keys; %.3f before the kill), their slowest call %v (made at kill%+v); jobs %d",
		policy, promoted.Addr(), promotedAt.Sub(killed).Round(time.Millisecond), resumed.Sub(promotedAt).Round(time.Millisecond),
		rate, healthyUnits, window.Round(time.Millisecond), healthyKeys, baseRate, slowest.Round(100*time.Microsecond), slowestAt.Round(time.Millisecond), st.Succeeded)
}

// judgeFailedKey checks the calls of a key of the failed master: the
// policy's answers only until Redis answers again (a slot map the client
// reloads from a server that has not yet heard of the promotion may send
// a key back to the dead master for a moment: not after every key was
// back, and a reload's cooldown), and what the failover lost.
func judgeFailedKey(t *testing.T, k *loadKey, policy redisstore.FailurePolicy, killed, dead, cut time.Time, lag bool, resumed time.Time) {
	t.Helper()
	want := map[redisstore.FailurePolicy]answer{redisstore.FailClosed: failed, redisstore.FailOpen: fromOpen, redisstore.FailLocal: fromLocal}[policy]
	var (
		old, now        []call // Redis's admissions on the old master, and on the new
		policied, flaps int
	)
	for i, cl := range k.calls {
		switch from := cl.from(); {
		case from == refused: // the quota, in Redis or the local buckets
		case from == fromRedis && cl.d.Now < dead.UnixNano():
			old = append(old, cl)
		case from == fromRedis:
			now = append(now, cl)
		default:
			policied++
			if assert.Equal(t, want, from, "%s: call %d at death%+v while the master was down: %+v, %v", k.name, i, cl.at.Sub(dead), cl.d, cl.err) && from == failed {
				assert.ErrorIs(t, cl.err, redisstore.ErrUnavailable, "%s: call %d while the master was down", k.name, i)
			}
			if len(now) > 0 {
				flaps++
				assert.Less(t, cl.at, resumed.Add(500*time.Millisecond), "%s: call %d at death%+v answered by the policy after Redis had come back", k.name, i, cl.at.Sub(dead))
			}
		}
	}
	require.NotEmpty(t, now, "%s: no admission by the new master", k.name)

	// What the old master acknowledged that the new one never had: the
	// admissions after the state the new master's first booking starts
	// from (bookings of one key only grow).
	var lost, recent int
	from := killed
	if lag {
		from = cut
	}
	from = from.Add(-lagSlack)
	for _, cl := range old {
		if cl.d.Booking.TAT > now[0].d.Booking.Prev {
			lost++
		}
		if cl.d.Now >= from.UnixNano() {
			recent++
		}
	}
	var starts []backendtest.Start
	for _, cl := range append(old, now...) {
		starts = append(starts, backendtest.Start{At: cl.d.Start(), Cost: 1})
	}
	over := overAdmission(k.limit, starts)
	assert.LessOrEqual(t, over, lost, "%s: units over the limit in Redis's admissions, against the admissions the failover lost", k.name)
	assert.LessOrEqual(t, lost, recent, "%s: admissions lost, against those decided in the replication lag before the death", k.name)
	t.Logf("%s: %d admissions on the old master, %d answered by %s (%d after Redis came back), %d on the new; lost %d (of %d in the lag), over-admitted %d units",
		k.name, len(old), policied, policy, flaps, len(now), lost, recent, over)
}

// overAdmission returns how many units starts exceed lim by: the least
// number added to lim's burst and quotas with which backendtest.Check
// passes.
func overAdmission(lim bucket.Limit, starts []backendtest.Start) int {
	for over := 0; ; over++ {
		l := lim.WithBurst(lim.Burst + int64(over))
		l.Quotas = slices.Clone(l.Quotas)
		for i := range l.Quotas {
			l.Quotas[i].Max += int64(over)
		}
		if backendtest.Check(l, starts) == nil {
			return over
		}
	}
}

// checkLeasesDown checks, while the victim is down and before its replica
// can have been promoted, that a healthy master's lease (healthy) is
// renewed and released in Redis, and the victim's (failed) get the
// policy's answer.
func checkLeasesDown(t *testing.T, c *redistest.Cluster, s *redisstore.Store, policy redisstore.FailurePolicy, victim *redistest.Server, healthy, failed driver.LeaseRef, capped driver.Limit) {
	t.Helper()
	ctx := context.Background()
	lost, err := s.Renew(ctx, []driver.LeaseRef{healthy}, time.Minute)
	assert.NoError(t, err, "Renew of a healthy master's lease")
	assert.Empty(t, lost, "Renew of a healthy master's lease")
	_, err = s.Renew(ctx, []driver.LeaseRef{failed}, time.Minute)
	assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Renew of the failed master's lease (Redis may hold it)")
	_, err = s.Renew(ctx, []driver.LeaseRef{healthy, failed}, time.Minute)
	assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Renew of both leases")

	// A capped admission on each: Redis decides the healthy one.
	d, err := s.Admit(ctx, driver.Request{Key: healthy.Key, Limit: capped, Cost: 1, Lease: "second", LeaseTTL: time.Minute})
	assert.NoError(t, err, "capped Admit on a healthy master")
	assert.True(t, d.Allowed && d.Booking.TAT > 0, "capped Admit on a healthy master: %+v: want admitted by Redis", d)
	d, err = s.Admit(ctx, driver.Request{Key: failed.Key, Limit: capped, Cost: 1, Lease: "second", LeaseTTL: time.Minute})
	switch policy {
	case redisstore.FailClosed:
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "capped Admit on the failed master")
	case redisstore.FailOpen:
		assert.True(t, err == nil && d.Allowed && d.Booking.TAT == 0, "capped Admit on the failed master: %+v, %v: want admitted at once", d, err)
	case redisstore.FailLocal:
		assert.True(t, err == nil && redisstore.IsLocal(d), "capped Admit on the failed master: %+v, %v: want decided locally", d, err)
	}

	second := driver.LeaseRef{Key: healthy.Key, ID: "second"}
	assert.NoError(t, s.Release(ctx, []driver.LeaseRef{second}), "Release of a healthy master's lease")
	lost, err = s.Renew(ctx, []driver.LeaseRef{second}, time.Minute)
	assert.NoError(t, err, "Renew of a healthy master's released lease")
	assert.Equal(t, []driver.LeaseRef{second}, lost, "Renew of a healthy master's released lease: want it lost, released in Redis")
	err = s.Release(ctx, []driver.LeaseRef{{Key: failed.Key, ID: "second"}})
	if policy == redisstore.FailLocal {
		assert.NoError(t, err, "Release of the failed master's lease: FailLocal releases the local buckets' leases")
	} else {
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Release of the failed master's lease")
	}

	// All of this must have happened before the promotion: the failed
	// master still serves its slots.
	m, err := c.MasterOf(s.RedisKey(failed.Key))
	require.NoError(t, err)
	require.Equal(t, victim, m, "the failed master's replica was promoted during the lease checks: they prove nothing")
}

// failoverJobs starts a Dispatcher running jobs on keys at 10/s each
// (failoverLimit) until stop, from a goroutine in wg, and returns it and
// its futures (read them after wg.Wait).
func failoverJobs(t *testing.T, s *redisstore.Store, keys []*loadKey, stop chan struct{}, wg *sync.WaitGroup) (*dispatcher.Dispatcher[int, int], *[]*dispatcher.Future[int]) {
	lim, err := bucket.NewLimiter(s, failoverLimit)
	require.NoError(t, err)
	d, err := dispatcher.New(func(_ context.Context, k int) (int, error) { return k, nil },
		func(k int) string { return keys[k].name },
		dispatcher.WithWorkers(8), dispatcher.WithQueue(4000), dispatcher.WithLimiter(lim))
	require.NoError(t, err)
	var futures []*dispatcher.Future[int]
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for k := range keys {
				f, err := d.Submit(context.Background(), k)
				if !assert.NoError(t, err, "Submit") {
					return
				}
				futures = append(futures, f)
			}
		}
	})
	return d, &futures
}

// keysOn returns n keys per master, named prefix and a number, each on
// the master that serves its slot now.
func keysOn(t *testing.T, c *redistest.Cluster, s *redisstore.Store, prefix string, masters []*redistest.Server, n int) []*loadKey {
	t.Helper()
	var keys []*loadKey
	count := make(map[*redistest.Server]int)
	for i := 0; len(keys) < n*len(masters); i++ {
		require.Less(t, i, 1000, "keys for every master")
		name := fmt.Sprint(prefix, i)
		m, err := c.MasterOf(s.RedisKey(name))
		require.NoError(t, err)
		if slices.Contains(masters, m) && count[m] < n {
			count[m]++
			keys = append(keys, &loadKey{name: name, master: m})
		}
	}
	return keys
}

// waitFor polls cond until it holds, or fails t after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
