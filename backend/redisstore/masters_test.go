package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/redisstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClusterMasterDown: in a Cluster of 3 masters, one dead and not
// replaced, every call on a key of a live master is decided by Redis and
// every call on a key of the dead one gets the policy's answer, under
// each policy: Admit, AdmitBatch mixing the two, Pause, Learn, Refund,
// Renew and Release. The dead master is probed in the background; once no call
// asks about it, it is forgotten, and the next call on its keys finds it
// down again.
func TestClusterMasterDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	c := redistest.StartCluster(t, 3)
	dead := c.Servers[0]
	require.NoError(t, dead.Kill())
	for _, policy := range []redisstore.FailurePolicy{redisstore.FailClosed, redisstore.FailOpen, redisstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) { testClusterMasterDown(t, c, dead, policy) })
	}
}

func testClusterMasterDown(t *testing.T, c *redistest.Cluster, dead *redistest.Server, policy redisstore.FailurePolicy) {
	const retry = 20 * time.Millisecond
	s := newStore(t, failFastCluster(t, c.Addrs()), redisstore.Options{FailurePolicy: policy, RetryInterval: retry})
	ctx := context.Background()
	var live, down []string // keys of a live master, and of the dead one
	for _, k := range keysOn(t, c, s, "k", []*redistest.Server{c.Servers[1], dead}, 2) {
		if k.master == dead {
			down = append(down, k.name)
		} else {
			live = append(live, k.name)
		}
	}
	lim := backendtest.Limit(bucket.PerSecond(1000).WithBurst(1000).WithInflight(10))
	req := func(key string, lease driver.LeaseID) driver.Request {
		return driver.Request{Key: key, Limit: lim, Cost: 1, Lease: lease, LeaseTTL: time.Minute}
	}
	ids := driver.NewLeaseIDs()
	// policy checks the answer to an admission on the dead master.
	policyAnswer := func(what string, d driver.Decision, err error) {
		t.Helper()
		switch policy {
		case redisstore.FailClosed:
			assert.ErrorIs(t, err, redisstore.ErrUnavailable, "%s on the dead master", what)
		case redisstore.FailOpen:
			assert.True(t, err == nil && d.Allowed && d.Booking.TAT == 0, "%s on the dead master: %+v, %v: want admitted at once", what, d, err)
		case redisstore.FailLocal:
			assert.True(t, err == nil && redisstore.IsLocal(d), "%s on the dead master: %+v, %v: want decided locally", what, d, err)
		}
	}
	fromRedis := func(what string, d driver.Decision, err error) {
		t.Helper()
		assert.NoError(t, err, "%s on a live master", what)
		assert.True(t, d.Allowed && d.Booking.TAT > 0, "%s on a live master: %+v: want admitted by Redis", what, d)
	}

	// The first call on the dead master fails, and finds it down.
	d, err := s.Admit(ctx, req(down[0], ids.Next()))
	policyAnswer("Admit", d, err)
	require.Equal(t, 1, redisstore.DownMasters(s), "masters known down after a call on the dead one")
	liveLease := req(live[0], ids.Next())
	d, err = s.Admit(ctx, liveLease)
	fromRedis("Admit", d, err)
	assert.NoError(t, s.Refund(ctx, liveLease, d), "Refund on a live master")

	batch := []driver.Admission{{Request: req(live[0], ids.Next())}, {Request: req(down[0], ids.Next())}, {Request: req(live[1], ids.Next())}, {Request: req(down[1], ids.Next())}}
	s.AdmitBatch(ctx, batch)
	for _, a := range batch {
		if a.Key == live[0] || a.Key == live[1] {
			fromRedis("AdmitBatch", a.Decision, a.Err)
		} else {
			policyAnswer("AdmitBatch", a.Decision, a.Err)
		}
	}

	assert.NoError(t, s.Pause(ctx, live[1], time.Millisecond), "Pause on a live master")
	if err := s.Pause(ctx, down[1], time.Millisecond); policy == redisstore.FailClosed {
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Pause on the dead master")
	} else {
		assert.NoError(t, err, "Pause on the dead master")
	}

	learned := backendtest.Limit(bucket.PerSecond(1000).WithBurst(1000).WithFloor(1, time.Second))
	said := driver.Feedback{Interval: 10 * time.Millisecond}
	iv, err := s.Learn(ctx, live[1], learned, said)
	assert.NoError(t, err, "Learn on a live master")
	assert.Equal(t, 10*time.Millisecond, iv, "Learn on a live master")
	iv, err = s.Learn(ctx, down[1], learned, said)
	switch policy {
	case redisstore.FailClosed:
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Learn on the dead master")
	case redisstore.FailOpen:
		assert.NoError(t, err, "Learn on the dead master")
		assert.Equal(t, time.Millisecond, iv, "Learn on the dead master: want the limit's own interval")
	case redisstore.FailLocal:
		assert.NoError(t, err, "Learn on the dead master")
		assert.Equal(t, 10*time.Millisecond, iv, "Learn on the dead master: want learned by the local bucket")
	}

	liveRef := driver.LeaseRef{Key: batch[0].Key, ID: batch[0].Lease}
	downRef := driver.LeaseRef{Key: batch[1].Key, ID: batch[1].Lease}
	lost, err := s.Renew(ctx, []driver.LeaseRef{liveRef}, time.Minute)
	assert.NoError(t, err, "Renew on a live master")
	assert.Empty(t, lost, "Renew on a live master")
	lost, err = s.Renew(ctx, []driver.LeaseRef{downRef}, time.Minute)
	if policy == redisstore.FailLocal {
		assert.NoError(t, err, "Renew on the dead master of a lease the local buckets took")
		assert.Empty(t, lost, "Renew on the dead master of a lease the local buckets took")
	} else {
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Renew on the dead master")
	}
	_, err = s.Renew(ctx, []driver.LeaseRef{liveRef, {Key: down[0], ID: "never-taken"}}, time.Minute)
	assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Renew of a lease on each, the dead master's not the local buckets'")
	assert.NoError(t, s.Release(ctx, []driver.LeaseRef{liveRef}), "Release on a live master")
	lost, err = s.Renew(ctx, []driver.LeaseRef{liveRef}, time.Minute)
	assert.NoError(t, err, "Renew of a released lease on a live master")
	assert.Equal(t, []driver.LeaseRef{liveRef}, lost, "Renew of a released lease on a live master: want it lost")
	if err := s.Release(ctx, []driver.LeaseRef{downRef}); policy == redisstore.FailLocal {
		assert.NoError(t, err, "Release on the dead master")
	} else {
		assert.ErrorIs(t, err, redisstore.ErrUnavailable, "Release on the dead master")
	}

	// Past RetryInterval, calls on the dead master start a probe in the
	// background and still get the policy's answer.
	for range 5 {
		time.Sleep(retry)
		d, err := s.Admit(ctx, req(down[0], ids.Next()))
		policyAnswer("Admit after RetryInterval", d, err)
	}
	assert.Equal(t, 1, redisstore.DownMasters(s), "masters known down while its keys are asked about")

	// Asked about no more, the dead master is forgotten; a call on its
	// keys then fails, and finds it down again.
	uncapped := driver.Request{Key: live[0], Limit: backendtest.Limit(bucket.PerSecond(1000).WithBurst(1000)), Cost: 1}
	waitFor(t, 5*time.Second, "dead master forgotten", func() bool {
		d, err := s.Admit(ctx, uncapped)
		fromRedis("Admit", d, err)
		return redisstore.DownMasters(s) == 0
	})
	d, err = s.Admit(ctx, req(down[1], ids.Next()))
	policyAnswer("Admit once the master is forgotten", d, err)
	assert.Equal(t, 1, redisstore.DownMasters(s), "masters known down after a call on the forgotten one")
}
