package netfault_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/dispatcher"
)

// keys is how many keys a test's jobs have: tenant-0 to tenant-3.
const keys = 4

type job struct{ id, key int }

// A start is when a handler started a job of key tenant-<key>.
type start struct {
	key int
	at  int64 // Unix ns
}

// Jobs are a Dispatcher's, whose handler counts each job's runs and
// records its starts.
type jobs struct {
	d       *dispatcher.Dispatcher[job, int]
	futures []*dispatcher.Future[int]

	mu     sync.Mutex
	runs   map[int]int
	starts []start
}

func newJobs(t *testing.T, lim *bucket.Limiter, opts ...dispatcher.Option) *jobs {
	js := &jobs{runs: map[int]int{}}
	d, err := dispatcher.New(func(_ context.Context, j job) (int, error) {
		now := time.Now().UnixNano()
		js.mu.Lock()
		js.runs[j.id]++
		js.starts = append(js.starts, start{j.key, now})
		js.mu.Unlock()
		return j.id, nil
	}, func(j job) string { return fmt.Sprint("tenant-", j.key) },
		append([]dispatcher.Option{dispatcher.WithWorkers(8), dispatcher.WithLimiter(lim)}, opts...)...)
	require.NoError(t, err)
	js.d = d
	return js
}

// submit submits n jobs, on the keys in turn.
func (js *jobs) submit(t *testing.T, n int) {
	for range n {
		id := len(js.futures)
		fut, err := js.d.Submit(context.Background(), job{id, id % keys})
		require.NoError(t, err)
		js.futures = append(js.futures, fut)
	}
}

// finish shuts the dispatcher down, draining it, and checks that every
// job was resolved exactly once, with its handler's result: the handler
// ran once for each job, none twice and none lost (a future resolved
// twice panics), and Stats count every job once, as succeeded.
func (js *jobs) finish(t *testing.T) dispatcher.Stats {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, js.d.Shutdown(ctx), "Shutdown (jobs left unresolved?)")
	js.mu.Lock()
	defer js.mu.Unlock()
	for i, fut := range js.futures {
		v, err := fut.Result()
		if assert.NoError(t, err, "job %d", i) {
			assert.Equal(t, i, v, "job %d's result", i)
		}
		if js.runs[i] != 1 {
			assert.Fail(t, fmt.Sprintf("job %d ran %d times, want once", i, js.runs[i]))
		}
	}
	st := js.d.Stats()
	n := int64(len(js.futures))
	assert.Equal(t, n, st.Submitted, "Stats.Submitted")
	assert.Equal(t, n, st.Succeeded, "Stats.Succeeded")
	assert.Zero(t, st.Failed+st.Cancelled+st.Queued+st.Running, "Stats: failed, cancelled, queued, running")
	return st
}

// startsOf returns the starts of key tenant-<k>'s jobs.
func (js *jobs) startsOf(k int) []backendtest.Start {
	js.mu.Lock()
	defer js.mu.Unlock()
	var ss []backendtest.Start
	for _, s := range js.starts {
		if s.key == k {
			ss = append(ss, backendtest.Start{At: s.at, Cost: 1})
		}
	}
	return ss
}

// startedIn returns how many jobs started in [from, to).
func (js *jobs) startedIn(from, to int64) int {
	js.mu.Lock()
	defer js.mu.Unlock()
	n := 0
	for _, s := range js.starts {
		if s.at >= from && s.at < to {
			n++
		}
	}
	return n
}
