package dispatcher_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/jobinfo"
)

// Every handler's context carries its job's key and attempt, with and
// without a limiter and with no middleware; a nil key function gives the
// key "default"; a job put back after a retry-after runs as attempt 2.
func TestHandlerContextCarriesJobInfo(t *testing.T) {
	info := func(ctx context.Context, _ task) (jobinfo.Info, error) {
		got, ok := jobinfo.FromContext(ctx)
		if !ok {
			return got, fmt.Errorf("no jobinfo in the handler's context")
		}
		return got, nil
	}
	for _, tt := range []struct {
		name string
		key  func(task) string
		opts []dispatcher.Option
		want string
	}{
		{"no limiter", taskKey, nil, "A"},
		{"limiter", taskKey, []dispatcher.Option{dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000)))}, "A"},
		{"nil key", nil, nil, "default"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDispatcher(t, info, tt.key, tt.opts...)
			got, err := d.Do(context.Background(), task{"A", 1})
			require.NoError(t, err)
			assert.Equal(t, jobinfo.Info{Key: tt.want, Attempt: 1}, got)
		})
	}

	t.Run("requeued", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var (
				mu       sync.Mutex
				attempts []int
			)
			d := newDispatcher(t, func(ctx context.Context, j task) (int, error) {
				got, _ := jobinfo.FromContext(ctx)
				mu.Lock()
				defer mu.Unlock()
				attempts = append(attempts, got.Attempt)
				if len(attempts) == 1 {
					return 0, &retryAfterError{delay: time.Second}
				}
				return j.n, nil
			}, taskKey, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000))))
			_, err := d.Do(context.Background(), task{"A", 1})
			require.NoError(t, err)
			assert.Equal(t, []int{1, 2}, attempts)
		})
	})
}
