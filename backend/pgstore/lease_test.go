package pgstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/faulttest"
	"github.com/leakybucket/leakybucket/internal/pgtest"
)

var (
	leasedReq = backendtest.Leased
	refs      = backendtest.LeaseRefs
)

// count returns how many rows of table (quoted) hold key.
func count(t *testing.T, s *pgstore.Store, table, key string) int {
	t.Helper()
	var n int
	err := s.Pool().QueryRow(context.Background(), "SELECT count(*) FROM "+table+" WHERE key = $1", pgx.QueryExecModeExec, []byte(key)).Scan(&n)
	require.NoError(t, err, "count the rows of %q in %s", key, table)
	return n
}

// TestLeaseSweep: the sweep deletes the rows of expired leases, and the
// rows of keys whose buckets are fresh and whose leases are expired or
// released; it keeps the row of a key whose bucket is fresh but which
// holds a lease, and so its cap. The leases are taken an hour behind
// the server's clock, which the sweep reads.
func TestLeaseSweep(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{Conns: -1, SweepInterval: -1})
	ctx := context.Background()
	lim := bucket.Every(time.Millisecond, 1).WithInflight(1)
	t0 := time.Now().Add(-time.Hour).UnixMicro()
	for _, r := range []driver.Request{
		leasedReq("expired", lim, "a", time.Second),
		leasedReq("held", lim, "a", 2*time.Hour),
		leasedReq("released", lim, "a", 2*time.Hour),
	} {
		d, _, err := pgstore.RawAdmit(ctx, s, r, &t0)
		require.NoError(t, err)
		require.True(t, d.Allowed, "Admit(%s) an hour ago", r.Key)
	}
	require.NoError(t, s.Release(ctx, refs("released", "a")))

	n, err := pgstore.Sweep(ctx, s)
	require.NoError(t, err)
	// The release found the bucket of released fresh, and deleted its row.
	assert.Equal(t, int64(2), n, "rows swept: the expired lease's and its key's bucket")
	for _, tc := range []struct {
		key            string
		bucket, leases int
	}{
		{"expired", 0, 0},
		{"held", 1, 1},
		{"released", 0, 0},
	} {
		assert.Equal(t, tc.bucket, count(t, s, s.Table(), tc.key), "bucket rows of %s after the sweep", tc.key)
		assert.Equal(t, tc.leases, count(t, s, pgstore.LeaseTable(s), tc.key), "lease rows of %s after the sweep", tc.key)
	}
	d, err := s.Admit(ctx, leasedReq("held", lim, "b", 0))
	require.NoError(t, err)
	assert.True(t, d.AtCap, "Admit(held) with another lease after the sweep: want refused at the cap")
}

// TestUpgradeFromVersion1: a Store of this version upgrades a schema of
// version 1 at its first call, keeping its buckets; processes still on
// version 1 (decide_v1, sweep_v1, which refuse capped requests) go on
// working on it, and cannot break a cap: here one admits on a capped
// key without the cap (its limit has none) and its sweep deletes the
// key's row, but the lease, in a table version 1 never touches, still
// holds the key's only place.
func TestUpgradeFromVersion1(t *testing.T) {
	p := newPool(t)
	ctx := context.Background()
	s := newStore(t, p, pgstore.Options{SweepInterval: -1})
	require.NoError(t, pgstore.MigrateTo(ctx, s, 1), "install version 1")
	old := driver.Request{Key: "old", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	d, err := pgstore.AdmitV1(ctx, s, old, nil)
	require.NoError(t, err, "decide_v1 on version 1")
	require.True(t, d.Allowed, "decide_v1 on version 1")

	d, err = s.Admit(ctx, old)
	require.NoError(t, err, "Admit upgrading the schema")
	assert.False(t, d.Allowed, "second admission of 1/h: the bucket of version 1 was lost in the upgrade")
	var version int
	require.NoError(t, p.QueryRow(ctx, "SELECT version FROM "+strings.TrimSuffix(s.Table(), ".buckets")+".version").Scan(&version))
	assert.Equal(t, pgstore.SchemaVersion, version, "version after the upgrade")

	// Taken an hour behind the server's clock, for two hours.
	t0 := time.Now().Add(-time.Hour).UnixMicro()
	capped := bucket.Every(time.Millisecond, 1000).WithBurst(10).WithInflight(1)
	d, _, err = pgstore.RawAdmit(ctx, s, leasedReq("k", capped, "a", 2*time.Hour), &t0)
	require.NoError(t, err)
	require.True(t, d.Allowed, "the capped key's first lease")
	d, err = pgstore.AdmitV1(ctx, s, driver.Request{Key: "k", Limit: backendtest.Limit(bucket.Every(time.Millisecond, 1000).WithBurst(10)), Cost: 1}, &t0)
	require.NoError(t, err, "decide_v1 on version 2")
	require.True(t, d.Allowed, "decide_v1 on the capped key, uncapped")
	_, err = pgstore.SweepV1(ctx, s)
	require.NoError(t, err, "sweep_v1 on version 2")
	assert.Zero(t, count(t, s, s.Table(), "k"), "the capped key's row after version 1 wrote it fresh and swept it")

	d, err = s.Admit(ctx, leasedReq("k", capped, "b", 0))
	require.NoError(t, err)
	assert.True(t, d.AtCap, "another lease while the first is held, after version 1's admission and sweep: want refused at the cap")
	d, err = s.Admit(ctx, leasedReq("old", bucket.PerHour(1).WithInflight(1), "a", 0))
	require.NoError(t, err)
	assert.False(t, d.Allowed, "a capped admission on version 1's bucket of 1/h")
	assert.False(t, d.AtCap, "a capped admission on version 1's bucket of 1/h: refused on the rate, not the cap")
}

// TestAbandonedLeasesReleased: three capped admissions of one key in an
// AdmitBatch whose ctx ends while the database holds them are given back
// with their leases, all three: the rate's refunds join into one
// (driver.UnbookAll), which releases no lease of the other two unless
// each is released on its own.
func TestAbandonedLeasesReleased(t *testing.T) {
	p := newPool(t)
	ctx := context.Background()
	schema := pgtest.Schema(t, p.Config().ConnString())
	s := newStore(t, p, pgstore.Options{Schema: schema, SweepInterval: -1})
	lim := bucket.PerHour(3).WithBurst(3).WithInflight(3)
	_, err := s.Admit(ctx, leasedReq("warm-up", lim, "w", 0))
	require.NoError(t, err, "Admit installing the schema")

	lock := lockSchema(t, p, s)
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	batch := []driver.Admission{{Request: leasedReq("k", lim, "a", 0)}, {Request: leasedReq("k", lim, "b", 0)}, {Request: leasedReq("k", lim, "c", 0)}}
	done := make(chan struct{})
	go func() {
		s.AdmitBatch(callCtx, batch)
		close(done)
	}()
	lock.await(1)
	cancel()
	lock.release()
	<-done
	for i, a := range batch {
		assert.ErrorIs(t, a.Err, context.Canceled, "AdmitBatch[%d] whose ctx ended while the database held it", i)
	}
	s.Close() // waits for the give-back

	again := newStore(t, p, pgstore.Options{Schema: schema, SweepInterval: -1})
	for _, id := range []string{"x", "y", "z"} {
		d, err := again.Admit(ctx, leasedReq("k", lim, id, 0))
		require.NoError(t, err)
		assert.True(t, d.Allowed, "Admit with lease %s after the abandoned batch (at the cap: %v): its leases and rate were given back", id, d.AtCap)
	}
}

// TestLeaseIDs: a lease ID of MaxLeaseIDLen bytes on a key of MaxKeyLen
// fits the leases table's index; a longer one is refused before any
// round trip with ErrLeaseIDTooLong. Renewing or releasing a lease that
// could not have been taken (an empty key or ID, too long) finds it not
// held.
func TestLeaseIDs(t *testing.T) {
	s := newStore(t, newPool(t), pgstore.Options{FailurePolicy: pgstore.FailOpen, SweepInterval: -1})
	ctx := context.Background()
	lim := bucket.PerHour(10).WithBurst(10).WithInflight(2)
	key, id := strings.Repeat("\xff", pgstore.MaxKeyLen), strings.Repeat("\xfe", pgstore.MaxLeaseIDLen)
	d, err := s.Admit(ctx, leasedReq(key, lim, id, 0))
	require.NoError(t, err, "Admit with the longest key and lease ID")
	require.True(t, d.Allowed, "Admit with the longest key and lease ID")
	lost, err := s.Renew(ctx, refs(key, id), time.Hour)
	require.NoError(t, err)
	assert.Empty(t, lost, "Renew of the lease with the longest key and ID")

	_, err = s.Admit(ctx, leasedReq("k", lim, id+"x", 0))
	assert.ErrorIs(t, err, pgstore.ErrLeaseIDTooLong, "Admit")
	batch := []driver.Admission{{Request: leasedReq("k", lim, id+"x", 0)}}
	s.AdmitBatch(ctx, batch)
	assert.ErrorIs(t, batch[0].Err, pgstore.ErrLeaseIDTooLong, "AdmitBatch")

	bad := []driver.LeaseRef{{Key: "", ID: "a"}, {Key: "k", ID: ""}, {Key: "k", ID: driver.LeaseID(id + "x")}, {Key: key + "x", ID: "a"}}
	lost, err = s.Renew(ctx, append(bad, driver.LeaseRef{Key: key, ID: driver.LeaseID(id)}), time.Hour)
	require.NoError(t, err)
	assert.Equal(t, bad, lost, "Renew of leases that cannot exist, and of a held one")
	assert.NoError(t, s.Release(ctx, bad), "Release of leases that cannot exist")
}

// TestLeasesWhileDown: what each failure policy does with capped
// requests and their leases while PostgreSQL is unavailable
// (internal/faulttest says what must hold): as redisstore's policies do.
func TestLeasesWhileDown(t *testing.T) {
	for _, policy := range []pgstore.FailurePolicy{pgstore.FailClosed, pgstore.FailOpen, pgstore.FailLocal} {
		t.Run(policy.String(), func(t *testing.T) {
			opts := pgstore.Options{Schema: "unused", FailurePolicy: policy}
			if policy == pgstore.FailOpen {
				opts.RetryInterval = -1
			}
			faulttest.LeasesWhileDown(t, policy.String(), down(t, newStore(t, deadPool(t), opts)))
		})
	}
}

// TestFailLocalLeasesAcrossOutage: under FailLocal, a lease taken while
// PostgreSQL is down is the local buckets', which renew it then and once
// the database is back (the database does not hold it), and release it;
// a lease the database holds is reported lost while it is down, since
// it cannot be renewed there. A cluster of the test's own is stopped
// (at once, as in a crash: the Store is Durable, so that the database's
// lease outlives it) and started.
func TestFailLocalLeasesAcrossOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops a PostgreSQL cluster")
	}
	srv := pgtest.Start(t)
	pool := pgtest.Pool(t, srv.URL()+"&connect_timeout=1")
	s := newStore(t, pool, pgstore.Options{FailurePolicy: pgstore.FailLocal, RetryInterval: -1, Timeout: time.Second, Durable: true})
	ctx := context.Background()
	lim := bucket.PerHour(100).WithBurst(100).WithInflight(2)
	d, err := s.Admit(ctx, leasedReq("k", lim, "db", 0))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.False(t, pgstore.IsLocal(d), "lease taken with the database up: want decided by it")

	require.NoError(t, srv.Stop())
	d, err = s.Admit(ctx, leasedReq("k", lim, "local", 0))
	require.NoError(t, err)
	require.True(t, pgstore.IsLocal(d), "lease taken with the database down: want decided locally")
	_, err = s.Renew(ctx, refs("k", "db", "local"), time.Minute)
	assert.ErrorIs(t, err, pgstore.ErrUnavailable, "Renew with the database down, of its lease: it may hold it still")
	lost, err := s.Renew(ctx, refs("k", "local"), time.Minute)
	require.NoError(t, err, "Renew with the database down, of the local lease")
	assert.Empty(t, lost, "Renew with the database down: the local buckets renew their own")

	require.NoError(t, srv.Start())
	lost, err = s.Renew(ctx, refs("k", "local", "db"), time.Minute)
	require.NoError(t, err, "Renew with the database back")
	assert.Empty(t, lost, "Renew with the database back, of the lease the local buckets took and of the database's")
	require.NoError(t, s.Release(ctx, refs("k", "local", "db")))
	lost, err = s.Renew(ctx, refs("k", "local", "db"), time.Minute)
	require.NoError(t, err)
	assert.Equal(t, refs("k", "local", "db"), lost, "Renew of both leases after their release")
}
