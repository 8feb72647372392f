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

// LearnWhileDown checks what d, a driver.LearnBackend, answers to Learn
// under its policy, "FailClosed", "FailOpen" or "FailLocal": FailClosed
// fails with d.Unavailable; FailOpen, which admits without limit, returns
// the limit's own interval; FailLocal learns into the local buckets,
// whose decisions then apply what they learned.
func LearnWhileDown(t *testing.T, policy string, d Down) {
	s, ok := d.Store.(driver.LearnBackend)
	require.True(t, ok, "the store is not a driver.LearnBackend")
	ctx := context.Background()
	lim := backendtest.Limit(bucket.PerSecond(100).WithFloor(1, time.Second))
	fb := driver.Feedback{Interval: 200 * time.Millisecond}
	iv, err := s.Learn(ctx, "k", lim, fb)
	switch policy {
	case "FailClosed":
		assert.ErrorIs(t, err, d.Unavailable, "Learn without a server")
		assert.ErrorAs(t, err, d.Cause, "Learn without a server: want the error wrapping the cause")
	case "FailOpen":
		require.NoError(t, err, "Learn without a server")
		assert.Equal(t, 10*time.Millisecond, iv, "Learn without a server: want the limit's own interval")
	case "FailLocal":
		require.NoError(t, err, "Learn without a server")
		assert.Equal(t, 200*time.Millisecond, iv, "Learn without a server: the interval the local bucket learned")
		dec, err := s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
		require.NoError(t, err)
		require.True(t, dec.Allowed, "Admit without a server after Learn")
		assert.True(t, d.IsLocal(dec), "Admit without a server: want decided locally")
		assert.Equal(t, 200*time.Millisecond, dec.Interval, "Admit without a server after Learn: the interval applied")
		dec, err = s.Admit(ctx, driver.Request{Key: "k", Limit: lim, Cost: 1})
		require.NoError(t, err)
		assert.False(t, dec.Allowed, "second Admit without a server within the learned interval")
	default:
		require.Failf(t, "unknown policy", "%q", policy)
	}
}
