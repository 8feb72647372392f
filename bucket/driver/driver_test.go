package driver_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// plainBackend hides a backend's AdmitBatch.
type plainBackend struct{ driver.Backend }

// AdmitBatch decides a batch alike on a BatchBackend (memstore) and on a
// plain Backend, in order, each admission with its own error.
func TestAdmitBatch(t *testing.T) {
	lim := backendtest.Limit(bucket.PerHour(1).WithBurst(2))
	for _, b := range []driver.Backend{newStore(t), plainBackend{newStore(t)}} {
		batch := make([]driver.Admission, 5)
		for i := range batch {
			batch[i].Request = driver.Request{Key: "k", Limit: lim, Cost: 1}
		}
		batch[1].Key = ""
		driver.AdmitBatch(context.Background(), b, batch)
		want := []bool{true, false, true, false, false}
		for i, a := range batch {
			assert.Equal(t, want[i], a.Decision.Allowed, "%T: batch[%d] allowed", b, i)
			if i == 1 {
				assert.ErrorIs(t, a.Err, driver.ErrEmptyKey, "%T: batch[1], with an empty key", b)
			} else {
				assert.NoError(t, a.Err, "%T: batch[%d]", b, i)
			}
		}
	}
}

func newStore(t *testing.T) *memstore.Store {
	t.Helper()
	s, err := memstore.New(memstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func TestInterval(t *testing.T) {
	tests := []struct {
		lim  driver.Limit
		want time.Duration
	}{
		{driver.Limit{Rate: 1, Period: time.Second}, time.Second},
		{driver.Limit{Rate: 4, Period: time.Second}, 250 * time.Millisecond},
		{driver.Limit{Rate: 3, Period: time.Second}, 333_333_334 * time.Nanosecond}, // rounded up, never down
		{driver.Limit{Rate: math.MaxInt64, Period: time.Nanosecond}, time.Nanosecond},
		{driver.Limit{}, 0},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.lim.Interval(), "%v.Interval()", tt.lim)
	}
}
