package driver_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// mapBackend is a minimal driver.Backend: a mutex, a map of states, and
// the mathematics of package driver, in ticks of one nanosecond. Every
// call is atomic because it holds the mutex throughout. A real backend
// would also forget keys: a sweep deletes each state whose FreshAt has
// passed.
type mapBackend struct {
	mu     sync.Mutex
	states map[string]*driver.State
	now    func() int64 // the backend's clock, in ticks; it never goes back
}

func newMapBackend(now func() int64) *mapBackend {
	return &mapBackend{states: make(map[string]*driver.State), now: now}
}

func (b *mapBackend) Admit(_ context.Context, req driver.Request) (driver.Decision, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.states[req.Key]
	if !ok {
		st = new(driver.State) // a fresh bucket
	}
	d, err := driver.Decide(st, &req, time.Nanosecond, b.now())
	if d.Allowed && !ok {
		b.states[req.Key] = st // a refusal of a fresh bucket leaves nothing to keep
	}
	return d, err
}

func (b *mapBackend) Refund(_ context.Context, req driver.Request, d driver.Decision) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st, ok := b.states[req.Key]; ok {
		driver.Refund(st, &req, d, time.Nanosecond)
	}
	return nil
}

func (b *mapBackend) Pause(_ context.Context, key string, d time.Duration) error {
	if key == "" {
		return driver.ErrEmptyKey
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.states[key]
	if !ok {
		st = new(driver.State)
		b.states[key] = st
	}
	driver.Pause(st, b.now()+int64(min(max(d, 0), driver.MaxDuration)))
	return nil
}

// Example_backend builds a backend on State, Decide, Refund and Pause, and
// runs a Limiter on it. The clock is injected here so that the output is
// the same on every run; a real backend reads its own.
func Example_backend() {
	var clock time.Duration
	b := newMapBackend(func() int64 { return int64(clock) })
	lim, err := bucket.NewLimiter(b, bucket.PerSecond(2)) // one unit every 500ms
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	allow := func() bool {
		ok, err := lim.Allow(ctx, "tenant-1")
		if err != nil {
			panic(err)
		}
		return ok
	}

	fmt.Println("at 0:", allow(), allow())
	clock += 500 * time.Millisecond
	fmt.Println("at 500ms:", allow())

	// A booking given back (Refund) frees its slot for the next caller.
	r, err := lim.Reserve(ctx, "tenant-1", 1, time.Second)
	if err != nil {
		panic(err)
	}
	fmt.Println("reserved:", r.OK, "to start in", r.Delay)
	if err := r.Cancel(ctx); err != nil {
		panic(err)
	}
	clock += 500 * time.Millisecond
	fmt.Println("at 1s:", allow())

	// A pause holds the key whatever its bucket holds.
	if err := lim.Pause(ctx, "tenant-1", time.Minute); err != nil {
		panic(err)
	}
	clock += 10 * time.Second
	fmt.Println("at 11s, paused:", allow())
	// Output:
	// at 0: true false
	// at 500ms: true
	// reserved: true to start in 500ms
	// at 1s: true
	// at 11s, paused: false
}

// The example's backend passes the conformance suite, on a real clock.
func TestMapBackendConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Config{New: func(t *testing.T) driver.Backend {
		start := time.Now()
		return newMapBackend(func() int64 { return int64(time.Since(start)) })
	}})
}
