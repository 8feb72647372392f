package faulttest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// A Down is a store whose server never answers, under one failure policy.
type Down struct {
	// Store has the policy, and the default RetryInterval but under
	// FailOpen, where it asks the server on every call.
	Store driver.BatchBackend
	// Unavailable is the store's error for a server that cannot serve;
	// Cause, a pointer to the type of error it wraps when no server
	// answers (for errors.As).
	Unavailable error
	Cause       any
	IsLocal     func(driver.Decision) bool
}

// FailClosed checks d under FailClosed: every call fails with an error
// matching d.Unavailable and wrapping the cause, including the calls
// answered without asking the server, known down.
func FailClosed(t *testing.T, d Down) {
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerSecond(10)), Cost: 1}
	for i := range 3 { // the first asks the server, the others find it known down
		_, err := d.Store.Admit(ctx, req)
		assert.ErrorIs(t, err, d.Unavailable, "Admit %d without a server", i)
		assert.ErrorAs(t, err, d.Cause, "Admit %d without a server: want the error wrapping the cause", i)
	}
	assert.ErrorIs(t, d.Store.Pause(ctx, "k", time.Second), d.Unavailable, "Pause without a server")
	batch := []driver.Admission{{Request: req}, {Request: req}}
	d.Store.AdmitBatch(ctx, batch)
	for i, a := range batch {
		assert.ErrorIs(t, a.Err, d.Unavailable, "AdmitBatch[%d] without a server", i)
	}
}

// FailOpen checks d under FailOpen: every admission is allowed at once,
// and refunds and pauses succeed.
func FailOpen(t *testing.T, d Down) {
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1)), Cost: 1}
	for i := range 5 {
		dec, err := d.Store.Admit(ctx, req)
		require.NoError(t, err, "Admit %d without a server, FailOpen", i)
		require.True(t, dec.Allowed, "Admit %d without a server, FailOpen", i)
		require.Zero(t, dec.Wait, "Admit %d without a server, FailOpen: want allowed at once", i)
		assert.NoError(t, d.Store.Refund(ctx, req, dec), "Refund of an open admission")
	}
	assert.NoError(t, d.Store.Pause(ctx, "k", time.Second), "Pause without a server, FailOpen")
}

// FailLocal checks d under FailLocal: local buckets decide, on Unix time
// as the server would, book ahead, take refunds and pauses.
func FailLocal(t *testing.T, d Down) {
	s := d.Store
	ctx := context.Background()
	req := driver.Request{Key: "k", Limit: backendtest.Limit(bucket.PerHour(1).WithBurst(2)), Cost: 1, MaxWait: 2 * time.Hour}
	d1, err := s.Admit(ctx, req)
	require.NoError(t, err, "Admit without a server, FailLocal")
	require.True(t, d1.Allowed, "Admit without a server, FailLocal")
	require.True(t, d.IsLocal(d1), "Admit without a server, FailLocal: want allowed locally")
	now := time.Now()
	assert.WithinRange(t, time.Unix(0, d1.Now), now.Add(-time.Minute), now, "local decision's Now: want Unix time like the server's")
	s.Admit(ctx, req)
	d3, _ := s.Admit(ctx, req)
	require.True(t, d3.Allowed, "third admission of burst 2 at 1/h: want booked an hour ahead")
	require.GreaterOrEqual(t, d3.Wait, 59*time.Minute, "third admission of burst 2 at 1/h: want booked an hour ahead")
	// Refunding the latest local admission frees its slot.
	require.NoError(t, s.Refund(ctx, req, d3))
	d4, _ := s.Admit(ctx, req)
	assert.Equal(t, d3.Start(), d4.Start(), "next start after refunding the latest booking: want the refunded one's")
	// A pause holds the local bucket.
	assert.NoError(t, s.Pause(ctx, "p", time.Hour), "Pause without a server, FailLocal")
	dp, _ := s.Admit(ctx, driver.Request{Key: "p", Limit: backendtest.Limit(bucket.PerSecond(100)), Cost: 1})
	assert.False(t, dp.Allowed, "local bucket admitted during a pause")
}
