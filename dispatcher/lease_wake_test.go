package dispatcher_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/memstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// stallStore is a memstore whose next batch, once armed, is decided and
// then held until resumed: a release can land while its answer is on
// its way back.
type stallStore struct {
	*memstore.Store
	mu              sync.Mutex
	decided, resume chan struct{}
}

func (s *stallStore) arm() (decided, resume chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.decided, s.resume = make(chan struct{}), make(chan struct{})
	return s.decided, s.resume
}

func (s *stallStore) AdmitBatch(ctx context.Context, batch []driver.Admission) {
	s.Store.AdmitBatch(ctx, batch)
	s.mu.Lock()
	decided, resume := s.decided, s.resume
	s.decided, s.resume = nil, nil
	s.mu.Unlock()
	if decided != nil {
		close(decided)
		<-resume
	}
}

// TestInflightReleaseWhileAsking: a lease released in this process while
// its key's ask at the cap is in flight (answered AtCap, decided before
// the release) still starts the key's next job at once, not after the
// key's poll interval.
func TestInflightReleaseWhileAsking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ms, err := memstore.New(memstore.Options{})
		require.NoError(t, err)
		defer ms.Close()
		store := &stallStore{Store: ms}
		lim, err := bucket.NewLimiter(store, bucket.PerSecond(1000).WithBurst(100).WithInflight(1))
		require.NoError(t, err)
		g := newGate()
		d := newDispatcher(t, g.handle, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithWorkers(4))
		f0, err := d.Submit(context.Background(), task{"A", 0})
		require.NoError(t, err)
		f1, err := d.Submit(context.Background(), task{"A", 1})
		require.NoError(t, err)
		<-g.started
		time.Sleep(time.Second) // job 1 polls at the cap, its backoff at its bound
		synctest.Wait()

		decided, resume := store.arm()
		<-decided // job 1's next ask: AtCap, its answer held
		g.release <- struct{}{}
		_, err = f0.Wait(context.Background()) // job 0's lease released meanwhile
		require.NoError(t, err)
		synctest.Wait()
		released := time.Now()
		close(resume)
		<-g.started
		assert.Equal(t, time.Duration(0), time.Since(released), "job 1 started this long after job 0's lease was released")
		g.release <- struct{}{}
		_, err = f1.Wait(context.Background())
		require.NoError(t, err)
	})
}
