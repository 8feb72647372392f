package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
)

// With -inflight N each tenant's limit caps its requests in flight at N
// across every process (bucket.Limit.Inflight): the Dispatcher takes a
// lease with each admission and gives it back when the request has been
// answered. The mock API counts each tenant's requests in flight on its
// own side, answers 429 to one over N, and reports the peak. So that the
// cap binds, rather than only the rate, the mock then takes a while to
// answer: -latency, by default a duration drawn uniformly from 20ms to
// 80ms (50ms on average, so N in flight make about N/50ms requests/s).

// defaultLatency is the mock's time to answer with -inflight and no
// -latency.
var defaultLatency = spread{20 * time.Millisecond, 80 * time.Millisecond}

// maxLatency bounds -latency: a mistyped one should not stall the run.
const maxLatency = 10 * time.Second

// latencySeed seeds the draws of the mock's answer times: every run draws
// the same sequence (which request gets which depends on their order of
// arrival).
const latencySeed = 17

// A spread is a range of durations, MIN-MAX, from which the mock draws
// each answer's time uniformly. The zero spread answers at once.
type spread struct{ min, max time.Duration }

// String returns the spread as -latency reads it: "20ms-80ms", or "50ms"
// for a fixed time.
func (s *spread) String() string {
	if s.min == s.max {
		return s.min.String()
	}
	return s.min.String() + "-" + s.max.String()
}

// Set reads MIN-MAX (20ms-80ms) or one duration (50ms).
func (s *spread) Set(v string) error {
	lo, hi, isRange := strings.Cut(v, "-")
	if !isRange {
		hi = lo
	}
	a, errA := time.ParseDuration(strings.TrimSpace(lo))
	b, errB := time.ParseDuration(strings.TrimSpace(hi))
	if errA != nil || errB != nil {
		return errors.New("want MIN-MAX such as 20ms-80ms, or one duration")
	}
	*s = spread{a, b}
	return nil
}

// mean returns the average of the draws.
func (s spread) mean() time.Duration { return s.min + (s.max-s.min)/2 }

// checkInflight checks -inflight and -latency, and gives -latency its
// default under -inflight.
func (c *config) checkInflight() error {
	if c.inflight < 0 || c.inflight > bucket.MaxInflight {
		return fmt.Errorf("-inflight %d: want a whole number from 0 (no cap) to %d", c.inflight, bucket.MaxInflight)
	}
	if !c.latencySet {
		if c.inflight > 0 && c.target == "" {
			c.latency = defaultLatency
		}
		return nil
	}
	l := c.latency
	switch {
	case c.target != "":
		return fmt.Errorf("-latency %q applies only to the mock API, not to -target", l.String())
	case l.min < 0 || l.max > maxLatency || l.min > l.max:
		return fmt.Errorf("-latency %q: want MIN-MAX with 0 ≤ MIN ≤ MAX ≤ %v", l.String(), maxLatency)
	}
	return nil
}

// randomLatency returns the mock's hold: it waits a duration drawn from s,
// or until ctx ends. It is safe for concurrent use; nil for the zero
// spread.
func randomLatency(s spread) func(ctx context.Context) {
	if s.max == 0 {
		return nil
	}
	draw := latencyDraw(s)
	return func(ctx context.Context) {
		t := time.NewTimer(draw())
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// checkLeases reports, before anything runs, a backend that cannot keep
// -inflight's leases; the error matches bucket.ErrNoLeases.
func checkLeases(cfg *config, st *store) error {
	if cfg.inflight == 0 {
		return nil
	}
	if _, err := bucket.NewLimiter(st.Backend, cfg.limit); errors.Is(err, bucket.ErrNoLeases) {
		return fmt.Errorf("-inflight %d with -backend %s: %w", cfg.inflight, cfg.backend, bucket.ErrNoLeases)
	}
	return nil
}

// latencyDraw returns a function drawing durations from s, seeded with
// latencySeed; it is safe for concurrent use.
func latencyDraw(s spread) func() time.Duration {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(latencySeed, latencySeed))
	return func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return s.min + time.Duration(rng.Int64N(int64(s.max-s.min)+1))
	}
}
