package driver_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

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
			if a.Decision.Allowed != want[i] || (i == 1) != (a.Err != nil) {
				t.Errorf("%T: batch[%d] = allowed %v, err %v; want allowed %v", b, i, a.Decision.Allowed, a.Err, want[i])
			}
		}
		if !errors.Is(batch[1].Err, driver.ErrEmptyKey) {
			t.Errorf("%T: batch[1] with an empty key: err %v, want ErrEmptyKey", b, batch[1].Err)
		}
	}
}

func newStore(t *testing.T) *memstore.Store {
	t.Helper()
	s, err := memstore.New(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
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
		if got := tt.lim.Interval(); got != tt.want {
			t.Errorf("%v.Interval() = %v, want %v", tt.lim, got, tt.want)
		}
	}
}
