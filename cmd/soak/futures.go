package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/leakybucket/leakybucket/dispatcher"
)

// futures counts the jobs the dispatcher accepted and how each was
// resolved, so that the end of the run can tell whether any was lost. The
// producer adds and collects; the counters may be read at any time.
// Collecting scans the futures not yet seen resolved, which are at most
// the queue, the workers and the futures added since the last scan.
type futures struct {
	pending []*dispatcher.Future[uint64] // owned by the producer, then by whoever joined it
	added   int                          // since the last collect

	accepted, succeeded, failed, cancelled atomic.Int64

	mu           sync.Mutex
	firstFailure error
}

// collectEvery is how many futures are added between scans.
const collectEvery = 1024

// add counts an accepted job.
func (fs *futures) add(f *dispatcher.Future[uint64]) {
	fs.accepted.Add(1)
	fs.pending = append(fs.pending, f)
	if fs.added++; fs.added >= collectEvery {
		fs.collect()
	}
}

// collect counts the futures resolved since the last scan and forgets
// them.
func (fs *futures) collect() {
	fs.added = 0
	kept := fs.pending[:0]
	for _, f := range fs.pending {
		_, err := f.Result()
		switch {
		case errors.Is(err, dispatcher.ErrPending):
			kept = append(kept, f)
		case err == nil:
			fs.succeeded.Add(1)
		case errors.Is(err, dispatcher.ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			fs.cancelled.Add(1)
		default:
			fs.failed.Add(1)
			fs.mu.Lock()
			if fs.firstFailure == nil {
				fs.firstFailure = err
			}
			fs.mu.Unlock()
		}
	}
	clear(fs.pending[len(kept):]) // let the resolved futures go
	fs.pending = kept
}

// resolved returns how many accepted jobs have been seen resolved.
func (fs *futures) resolved() int64 {
	return fs.succeeded.Load() + fs.failed.Load() + fs.cancelled.Load()
}

// failure returns the first failed job's error, or nil.
func (fs *futures) failure() error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.firstFailure
}
