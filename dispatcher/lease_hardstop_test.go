package dispatcher_test

import (
	"context"
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

// ctxStore is a memstore whose Renew fails once its context has ended,
// as a store that talks to a server (redisstore, pgstore, sqlitestore)
// does.
type ctxStore struct{ *memstore.Store }

func (s ctxStore) Renew(ctx context.Context, ls []driver.LeaseRef, ttl time.Duration) ([]driver.LeaseRef, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Store.Renew(ctx, ls, ttl)
}

// TestInflightRenewedAfterHardStop: a handler that goes on running after
// a hard stop (Shutdown waits for it) still holds its lease: nothing else
// takes the key's only place while it runs.
func TestInflightRenewedAfterHardStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ms, err := memstore.New(memstore.Options{})
		require.NoError(t, err)
		defer ms.Close()
		store := ctxStore{ms}
		capped := bucket.PerSecond(1000).WithInflight(1)
		lim, err := bucket.NewLimiter(store, capped)
		require.NoError(t, err)
		running := make(chan struct{})
		d, err := dispatcher.New(func(ctx context.Context, tk task) (int, error) {
			close(running)
			time.Sleep(10 * time.Second) // ignores its context
			return 0, nil
		}, taskKey, dispatcher.WithLimiter(lim), dispatcher.WithLeaseTTL(time.Second))
		require.NoError(t, err)
		_, err = d.Submit(context.Background(), task{"A", 0})
		require.NoError(t, err)
		<-running
		stopped := make(chan error)
		go func() {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a hard stop
			stopped <- d.Shutdown(ctx)
		}()
		other, err := bucket.NewLimiter(store, capped)
		require.NoError(t, err)
		short, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ls, err := other.Acquire(short, "A", 1)
		cancel()
		if err == nil {
			ls.Release(context.Background())
		}
		assert.ErrorIs(t, err, context.DeadlineExceeded, "a lease taken while the handler still ran after the hard stop")
		assert.ErrorIs(t, <-stopped, context.Canceled)
	})
}
