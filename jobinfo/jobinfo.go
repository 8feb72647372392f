// Package jobinfo carries which run of which job a handler serves — the
// job's key, its attempt and how long it waited — in the handler's context. A dispatcher puts
// it in every handler's context; middleware reads it (Logging logs it,
// RateLimit waits for the key's bucket) and Retry counts the attempts.
// Code that calls a handler itself can set it with NewContext.
package jobinfo

import (
	"context"
	"time"
)

// Info describes one run of a job.
type Info struct {
	// Key is the job's key: the bucket that admitted it and the queue it
	// waited in. Empty when none was given.
	Key string
	// Attempt is 1 for a job's first run, plus one for each time a
	// dispatcher put the job back after a retry-after, plus one for each
	// retry made by middleware.Retry.
	Attempt int
	// Waited is how long the job waited for this run of a dispatcher's:
	// time in the queue, admission included, from its Submit or, for a
	// run after a retry-after, from when it was put back. Zero when no
	// dispatcher ran the job.
	Waited time.Duration
}

// ContextKey is the key a context carries a *Info under. A context type
// may answer it in its Value method without storing a value (a
// dispatcher's job contexts do, at no cost per job); everyone else uses
// NewContext and FromContext.
type ContextKey struct{}

// NewContext returns a copy of ctx that carries info.
func NewContext(ctx context.Context, info Info) context.Context {
	return context.WithValue(ctx, ContextKey{}, &info)
}

// FromContext returns the Info ctx carries, if any.
func FromContext(ctx context.Context) (Info, bool) {
	if p, ok := ctx.Value(ContextKey{}).(*Info); ok && p != nil {
		return *p, true
	}
	return Info{}, false
}
