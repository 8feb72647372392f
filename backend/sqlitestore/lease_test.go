package sqlitestore_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// leaseReq returns a request of key under lim for lease id, held ttl.
func leaseReq(key string, lim bucket.Limit, id driver.LeaseID, ttl time.Duration) driver.Request {
	return driver.Request{Key: key, Limit: backendtest.Limit(lim), Cost: 1, Lease: id, LeaseTTL: ttl}
}

// leaseRows returns the lease IDs the file at path holds for key, and
// whether it holds key's bucket row.
func leaseRows(t *testing.T, path, key string) (ids []string, bucketRow bool) {
	t.Helper()
	db := rawDB(t, path)
	rows, err := db.Query("SELECT CAST(id AS TEXT) FROM leases WHERE key = ?1 ORDER BY id", []byte(key))
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM buckets WHERE key = ?1", []byte(key)).Scan(&n))
	return ids, n > 0
}

// TestLeaseRows: a lease is a row of the leases table from its admission
// to its release, its refund or the first capped admission of its key or
// sweep after it expired; a key's bucket row stays while a lease of it is
// held, and goes with its expired lease rows once none is.
func TestLeaseRows(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "b.db")
	s := open(t, path, sqlitestore.Options{Now: clock.Now, SweepInterval: -1})
	ctx := context.Background()
	lim := bucket.PerSecond(100).WithBurst(100).WithInflight(3)
	admit := func(r driver.Request) driver.Decision {
		t.Helper()
		d, err := s.Admit(ctx, r)
		require.NoError(t, err, "Admit(%q, lease %q)", r.Key, r.Lease)
		require.True(t, d.Allowed, "Admit(%q, lease %q)", r.Key, r.Lease)
		return d
	}
	rows := func(key string, want ...string) {
		t.Helper()
		ids, _ := leaseRows(t, path, key)
		assert.Equal(t, want, ids, "lease rows of %q", key)
	}

	admit(leaseReq("k", lim, "a", time.Second))
	admit(leaseReq("k", lim, "b", time.Second))
	rows("k", "a", "b")
	require.NoError(t, s.Release(ctx, []driver.LeaseRef{{Key: "k", ID: "a"}}))
	rows("k", "b")
	clock.Add(2 * time.Second) // b expires
	c := leaseReq("k", lim, "c", time.Second)
	d := admit(c)
	rows("k", "c") // b pruned by the admission
	require.NoError(t, s.Refund(ctx, c, d))
	rows("k") // released by the refund

	// A fresh bucket whose key holds a lease keeps its row; a lease of a
	// busy key that expired goes with a sweep.
	idle := bucket.Every(10*time.Millisecond, 1).WithInflight(1)
	busy := bucket.PerHour(1).WithInflight(1)
	admit(leaseReq("held", idle, "h", time.Hour))
	admit(leaseReq("expired", idle, "e", time.Second))
	admit(leaseReq("busy", busy, "x", time.Second))
	clock.Add(2 * time.Second)
	require.NoError(t, s.Sweep(ctx))
	for _, tt := range []struct {
		key       string
		ids       []string
		bucketRow bool
	}{
		{"held", []string{"h"}, true},
		{"expired", nil, false},
		{"busy", nil, true},
	} {
		ids, bucketRow := leaseRows(t, path, tt.key)
		assert.Equal(t, tt.ids, ids, "lease rows of %q after a sweep", tt.key)
		assert.Equal(t, tt.bucketRow, bucketRow, "bucket row of %q after a sweep", tt.key)
	}
	lost, err := s.Renew(ctx, []driver.LeaseRef{{Key: "held", ID: "h"}, {Key: "busy", ID: "x"}}, time.Minute)
	require.NoError(t, err)
	assert.Equal(t, []driver.LeaseRef{{Key: "busy", ID: "x"}}, lost, "Renew of a held lease and a swept one")
}

// TestLeaseBatchMixed: a batch that decides a key without its cap, then
// with it, reads the key's leases when the cap first needs them.
func TestLeaseBatchMixed(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "b.db"), sqlitestore.Options{SweepInterval: -1})
	ctx := context.Background()
	lim := bucket.PerSecond(100).WithBurst(100)
	d, err := s.Admit(ctx, leaseReq("k", lim.WithInflight(1), "held", time.Minute))
	require.NoError(t, err)
	require.True(t, d.Allowed)
	batch := []driver.Admission{
		{Request: driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}},
		{Request: leaseReq("k", lim.WithInflight(2), "a", time.Minute)},
		{Request: leaseReq("k", lim.WithInflight(2), "b", time.Minute)},
	}
	s.AdmitBatch(ctx, batch)
	var got []string
	for _, a := range batch {
		require.NoError(t, a.Err)
		got = append(got, map[bool]string{true: "allowed", false: "refused"}[a.Decision.Allowed])
	}
	assert.Equal(t, []string{"allowed", "allowed", "refused"}, got, "uncapped, then 2 leases with inflight=2 and one held")
	assert.True(t, batch[2].Decision.AtCap, "refusal at the cap: AtCap")
}
