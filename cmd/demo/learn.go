package main

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/dispatcher"
	"github.com/leakybucket/leakybucket/internal/limitmock"
)

// With -learn each tenant's limit is learned (bucket.Limit.WithFloor):
// -rate is its ceiling and -floor its floor, and the handler hands every
// answer to middleware.CheckResponse, which reports what its headers say
// to the Dispatcher, so that the tenant's rate follows the API's in every
// process sharing the backend.
//
// The mock API is then internal/limitmock, whose limit the client is not
// told: 3/4 of -rate, then 1/4 from the run's middle third, then 1/2 (30/s,
// 10/s and 20/s at -learn's default -rate of 40, which leaves the ceiling
// above every step, so that there is always something to learn). Each
// step lasts -jobs / (the sum of the three rates) seconds: a client that
// kept to the hidden limit exactly would sync its last item as the third
// step ends, 30 s at -learn's default -jobs of 600. The API advertises its
// limit in the headers of -api-headers, or only answers 429.

// Defaults that -learn changes, unless the flags are given.
const (
	learnRate = 40  // the ceiling: above the hidden limit's every step
	learnJobs = 600 // three steps of 10 s at the default rates
)

// sampleEvery is how often each process reads the rate its tenants'
// buckets apply, for the bars and the chart.
const sampleEvery = 100 * time.Millisecond

// maxSampled is how many tenants have their learned rate sampled, the
// first ones: as many as get a bar of their own.
const maxSampled = maxBars

// checkLearn checks -learn, -floor and -api-headers, gives -floor its
// default, and sets the hidden limit's schedule when the mock API runs.
func (c *config) checkLearn() error {
	if !c.learn {
		for _, f := range []string{"floor", "api-headers"} {
			if c.given[f] {
				return fmt.Errorf("-%s applies only with -learn", f)
			}
		}
		return nil
	}
	if !c.given["floor"] {
		c.floor = max(c.rate/100, 1)
	}
	if c.floor < 1 || c.floor > c.rate {
		return fmt.Errorf("-floor %d: want a whole number from 1 to -rate %d, the ceiling", c.floor, c.rate)
	}
	family, err := limitmock.ParseFamily(c.apiHeaders)
	if err != nil {
		return fmt.Errorf("-api-headers %q: want ietf, github or none", c.apiHeaders)
	}
	if c.target != "" {
		if c.given["api-headers"] {
			return errors.New("-api-headers applies only to the mock API, not to -target")
		}
		return nil
	}
	if c.inflight > 0 {
		return fmt.Errorf("-inflight %d with -learn: the mock API that -learn runs against judges rates only, not requests in flight", c.inflight)
	}
	c.family, c.hidden = family, hiddenSchedule(c.rate, c.jobs)
	return nil
}

// hiddenSchedule returns the mock API's limit over the run for a ceiling
// of rate and jobs items per tenant.
func hiddenSchedule(rate, jobs int) []limitmock.Step {
	of := func(f float64) int { return max(int(math.Round(f*float64(rate))), 1) }
	rates := [3]int{of(0.75), of(0.25), of(0.5)}
	step := max(time.Duration(float64(jobs)/float64(rates[0]+rates[1]+rates[2])*float64(time.Second)), time.Millisecond)
	return []limitmock.Step{{At: 0, Rate: rates[0]}, {At: step, Rate: rates[1]}, {At: 2 * step, Rate: rates[2]}}
}

// limitAt returns the hidden limit at at, since the API started.
func limitAt(schedule []limitmock.Step, at time.Duration) int {
	r := schedule[0].Rate
	for _, s := range schedule {
		if s.At <= at {
			r = s.Rate
		}
	}
	return r
}

// scheduleString describes the hidden limit: "30/s, 10/s from 10s, 20/s
// from 20s".
func scheduleString(schedule []limitmock.Step) string {
	parts := make([]string, len(schedule))
	for i, s := range schedule {
		parts[i] = fmt.Sprintf("%d/s", s.Rate)
		if i > 0 {
			parts[i] += " from " + roundDuration(s.At).String()
		}
	}
	return strings.Join(parts, ", ")
}

// roundDuration rounds d for people: to the millisecond under a second,
// else to the tenth of a second.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// A hiddenAPI is the mock API of -learn.
type hiddenAPI struct {
	*limitmock.Server
	start time.Time // when it started, to the microseconds it takes to listen: its clock's zero
}

func startHiddenAPI(cfg *config) (*hiddenAPI, error) {
	var latency func() time.Duration
	if cfg.latency.max > 0 {
		latency = latencyDraw(cfg.latency)
	}
	srv, err := limitmock.Start(limitmock.Config{Schedule: cfg.hidden, Headers: cfg.family, Latency: latency})
	if err != nil {
		return nil, err
	}
	return &hiddenAPI{Server: srv, start: time.Now()}, nil
}

// arrivals returns what the API answered each tenant, as the fixed mock's
// Arrivals does.
func (h *hiddenAPI) arrivals() map[string][]arrival {
	answers := h.Answers()
	out := make(map[string][]arrival, len(answers))
	for name, as := range answers {
		arr := make([]arrival, len(as))
		for i, a := range as {
			arr[i] = arrival{At: a.At, Status: a.Status}
		}
		out[name] = arr
	}
	return out
}

// checkLearning reports, before anything runs, a backend that cannot keep
// -learn's learned limits; the error matches bucket.ErrNoLearning.
func checkLearning(cfg *config, st *store) error {
	if _, ok := st.Backend.(driver.LearnBackend); cfg.learn && !ok {
		return fmt.Errorf("-learn with -backend %s: %w", cfg.backend, bucket.ErrNoLearning)
	}
	return nil
}

// sampleLearned reads, every sampleEvery until the returned function is
// called, the rate the first maxSampled tenants' buckets in d apply
// (dispatcher.KeyStats.Interval), and reports it to rec.
func sampleLearned(d *dispatcher.Dispatcher[item, struct{}], tenants []string, rec recorder) (stop func()) {
	tenants = tenants[:min(len(tenants), maxSampled)]
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(sampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-quit:
				return
			}
			now := time.Now()
			for _, name := range tenants {
				if ks, ok := d.KeyStats(name); ok && ks.Interval > 0 {
					rec.learned(name, now, ks.Interval)
				}
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
	}
}

// perSecond returns the rate of an emission interval, 0 for none.
func perSecond(interval time.Duration) float64 {
	if interval <= 0 {
		return 0
	}
	return float64(time.Second) / float64(interval)
}

// familyString says what the mock API tells of its limit.
func familyString(f limitmock.Family) string {
	switch f {
	case limitmock.IETF:
		return "told in IETF RateLimit-Policy and RateLimit headers (-api-headers ietf)"
	case limitmock.GitHub:
		return "told in GitHub's X-RateLimit-Limit, -Remaining and -Reset headers, of fixed windows of 10s (-api-headers github)"
	}
	return "told by nothing but 429s (-api-headers none)"
}
