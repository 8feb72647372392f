package dispatcher

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// An Option configures a Dispatcher. An invalid option makes New return
// an error naming it.
type Option func(*config) error

type config struct {
	workers     int
	queue       int
	limiter     *bucket.Limiter
	maxRequeues int
	bookAhead   time.Duration
	lateness    time.Duration
	batch       int
	keyStats    int // keys with figures at most, 0 for none
	leaseTTL    time.Duration
}

func defaults() config {
	return config{
		workers:     max(runtime.GOMAXPROCS(0), 4),
		queue:       1024,
		maxRequeues: 10,
		bookAhead:   5 * time.Millisecond,
		lateness:    time.Millisecond,
		batch:       256,
		leaseTTL:    driver.DefaultLeaseTTL,
	}
}

// WithWorkers sets the number of worker goroutines, which bounds how many
// handlers run at once. Default: GOMAXPROCS, at least 4.
func WithWorkers(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("dispatcher: WithWorkers(%d): need at least 1", n)
		}
		c.workers = n
		return nil
	}
}

// WithQueue sets how many accepted jobs may wait to start; Submit blocks
// and TrySubmit fails while that many wait. With a limiter, a blocked
// Submit resumes once a sixteenth of the queue is free (so that a fast
// producer is woken once per batch, not once per job). A job whose
// context ends while it waits gives its place back at once. Default 1024.
func WithQueue(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("dispatcher: WithQueue(%d): need at least 1", n)
		}
		c.queue = n
		return nil
	}
}

// WithLimiter admits every job through lim before it takes a worker. The
// limiter's limit for a key is read at each admission. Without a limiter
// jobs start in submission order as workers free up.
func WithLimiter(lim *bucket.Limiter) Option {
	return func(c *config) error {
		if lim == nil {
			return errors.New("dispatcher: WithLimiter: nil limiter")
		}
		c.limiter = lim
		return nil
	}
}

// WithMaxRequeues bounds how many times one job may be put back because
// its handler returned an error carrying a retry-after; past it the job
// fails with an error matching ErrTooManyRequeues and the handler's error.
// Default 10.
func WithMaxRequeues(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("dispatcher: WithMaxRequeues(%d): must not be negative", n)
		}
		c.maxRequeues = n
		return nil
	}
}

// WithBookAhead sets how far ahead of its start a job may be admitted.
// Booking slightly ahead lets the dispatcher pace high rates exactly
// (each job starts at its slot rather than when a poll notices the bucket
// has room); nothing is booked further ahead. Default 5ms; 0 admits only
// jobs that may start at once.
func WithBookAhead(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 || d > time.Minute {
			return fmt.Errorf("dispatcher: WithBookAhead(%v): must be within [0, 1m]", d)
		}
		c.bookAhead = d
		return nil
	}
}

// WithKeyStats keeps figures per key (KeyStats) for up to max keys at a
// time: counters and a histogram of admission waits, about 1.3 KiB a key,
// kept until a minute after the key's last job. A key that arrives while
// max keys have figures gets none (KeyStats reports false for it) until
// another's are forgotten, so memory stays bounded whatever the keys.
// Without it a key costs only its queue, and only while it has jobs
// waiting. Stats' totals are kept either way.
func WithKeyStats(max int) Option {
	return func(c *config) error {
		if max < 1 {
			return fmt.Errorf("dispatcher: WithKeyStats(%d): need at least 1", max)
		}
		c.keyStats = max
		return nil
	}
}

// WithBatchSize bounds how many admissions go to the backend in one call
// (one transaction for SQLite, one pipeline for Redis). Default 256.
func WithBatchSize(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("dispatcher: WithBatchSize(%d): need at least 1", n)
		}
		c.batch = n
		return nil
	}
}

// WithLeaseTTL sets the time to live of the leases the dispatcher takes
// for keys whose limit caps their work in flight (bucket.Limit.Inflight):
// it renews those of running handlers every third of it, so the leases of
// a process that dies come back within it. From driver.MinLeaseTTL;
// default driver.DefaultLeaseTTL (10s).
func WithLeaseTTL(d time.Duration) Option {
	return func(c *config) error {
		if err := driver.CheckRenew(d); err != nil {
			return fmt.Errorf("dispatcher: WithLeaseTTL: %w", err)
		}
		c.leaseTTL = d
		return nil
	}
}
