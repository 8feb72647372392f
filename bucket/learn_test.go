package bucket_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// TestLimiterLearn: a learned limit's key follows feedback; a fixed one
// ignores it; bad feedback and a backend without learning give matchable
// errors.
func TestLimiterLearn(t *testing.T) {
	store, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	limits := map[string]bucket.Limit{
		"learns": bucket.PerSecond(100).WithFloor(1, time.Second),
		"fixed":  bucket.PerSecond(100),
	}
	l, err := bucket.NewLimiter(store, bucket.Unlimited, bucket.WithKeyLimit(func(k string) bucket.Limit {
		if lim, ok := limits[k]; ok {
			return lim
		}
		return bucket.Unlimited
	}))
	require.NoError(t, err)
	ctx := context.Background()

	iv, err := l.Learn(ctx, "learns", bucket.Feedback{Quota: 10, Window: time.Second})
	require.NoError(t, err)
	assert.Equal(t, 100*time.Millisecond, iv)
	iv, err = l.Learn(ctx, "fixed", bucket.Feedback{Quota: 10, Window: time.Second})
	require.NoError(t, err)
	assert.Equal(t, 10*time.Millisecond, iv)
	iv, err = l.Learn(ctx, "other", bucket.Feedback{Throttled: true})
	require.NoError(t, err)
	assert.Zero(t, iv, "an unlimited key")

	for _, fb := range []bucket.Feedback{
		{Quota: -1, Window: time.Second}, {Quota: 0, Window: time.Second}, {Quota: 1, Window: -1},
		{Remaining: -1}, {Reset: -1},
	} {
		_, err := l.Learn(ctx, "learns", fb)
		assert.ErrorIs(t, err, bucket.ErrInvalidFeedback, "%+v", fb)
	}
	_, err = l.Learn(ctx, "", bucket.Feedback{})
	assert.ErrorIs(t, err, bucket.ErrEmptyKey)

	plain, err := bucket.NewLimiter(struct{ driver.Backend }{store}, limits["learns"])
	require.NoError(t, err)
	_, err = plain.Learn(ctx, "learns", bucket.Feedback{Throttled: true})
	assert.ErrorIs(t, err, bucket.ErrNoLearning)
}
