// Package keytype is compiled by TestKeyTypeChecked, never imported: a
// dispatcher of jobs keyed by tenant, whose key function returns a string
// (key_string.go) or, built with the tag wrongkey, an int (key_int.go),
// or whose cost function takes strings, not jobs (tag wrongjob,
// key_job.go); the compiler must reject both.
package keytype

import "context"

type job struct {
	tenant string
	id     int
}

func handle(_ context.Context, j job) (int, error) { return j.id, nil }
