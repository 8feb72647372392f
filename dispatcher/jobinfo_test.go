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

// Every handler's context carries its job's key, attempt and wait, with
// and without a limiter and with no middleware; a nil key function gives
// the key "default"; a job put back after a retry-after runs as attempt 2,
// having waited out the pause, while a goroutine its first run left
// behind still sees attempt 1.
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
			synctest.Test(t, func(t *testing.T) {
				d := newDispatcher(t, info, tt.key, tt.opts...)
				got, err := d.Do(context.Background(), task{"A", 1})
				require.NoError(t, err)
				assert.Equal(t, jobinfo.Info{Key: tt.want, Attempt: 1}, got)
			})
		})
	}

	t.Run("throttled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := newDispatcher(t, info, taskKey, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(10))))
			results := d.DoAll(context.Background(), []task{{"A", 1}, {"A", 2}, {"A", 3}})
			for i, r := range results {
				require.NoError(t, r.Err)
				assert.Equal(t, jobinfo.Info{Key: "A", Attempt: 1, Waited: time.Duration(i) * 100 * time.Millisecond}, r.Value, "job %d", i)
			}
		})
	})

	t.Run("requeued", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var (
				mu       sync.Mutex
				runs     []jobinfo.Info
				leftover = make(chan jobinfo.Info)
				second   = make(chan struct{})
			)
			d := newDispatcher(t, func(ctx context.Context, j task) (int, error) {
				got, _ := jobinfo.FromContext(ctx)
				mu.Lock()
				defer mu.Unlock()
				runs = append(runs, got)
				if len(runs) == 1 {
					time.Sleep(300 * time.Millisecond) // the pause counts from the run's end
					go func() {                        // outlives the run, and reads its context after the next began
						<-second
						got, _ := jobinfo.FromContext(ctx)
						leftover <- got
					}()
					return 0, &retryAfterError{delay: time.Second}
				}
				close(second)
				return j.n, nil
			}, taskKey, dispatcher.WithLimiter(newLimiter(t, bucket.PerSecond(1000))))
			_, err := d.Do(context.Background(), task{"A", 1})
			require.NoError(t, err)
			assert.Equal(t, []jobinfo.Info{
				{Key: "A", Attempt: 1},
				{Key: "A", Attempt: 2, Waited: time.Second},
			}, runs)
			assert.Equal(t, jobinfo.Info{Key: "A", Attempt: 1}, <-leftover, "the first run's context after the second began")
		})
	})
}
