package main

import (
	"context"
	"errors"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
)

// A resource is one figure the soak samples and, if judged, must not keep
// growing after the warm-up.
type resource struct {
	name   string // as in the JSON lines and the report, with its unit: heap_live_bytes, goroutines
	bytes  bool   // the figure is a size in bytes (for printing)
	judged bool
	// floor is the least growth, in the figure's unit, that can fail the
	// judgement: one goroutine more in forty is not a leak.
	floor float64
	read  func(ctx context.Context) (float64, error)
}

const mib = 1 << 20

// processResources are the soak process's own: the Go heap, its resident
// memory, goroutines and open file descriptors (where /proc or /dev/fd
// lists them).
func processResources() []resource {
	rs := []resource{
		{name: "heap_live_bytes", bytes: true, judged: true, floor: 1 * mib, read: heapLive()},
		{name: "goroutines", judged: true, floor: 4, read: func(context.Context) (float64, error) {
			return float64(runtime.NumGoroutine()), nil
		}},
	}
	if _, err := openFiles(); err == nil {
		rs = append(rs, resource{name: "open_fds", judged: true, floor: 4, read: func(context.Context) (float64, error) {
			n, err := openFiles()
			return float64(n), err
		}})
	}
	if _, err := residentBytes(); err == nil {
		rs = append(rs, resource{name: "rss_bytes", bytes: true, judged: true, floor: 8 * mib, read: func(context.Context) (float64, error) {
			n, err := residentBytes()
			return float64(n), err
		}})
	}
	return rs
}

// heapLive returns a reader of the heap the latest garbage collection
// found live (runtime/metrics /gc/heap/live:bytes). Of the measures of the
// Go heap it is the one a leak grows and nothing else does: HeapInuse or
// HeapAlloc read at an arbitrary moment also hold the garbage made since
// the last collection, up to GOGC (100%) more, which would swing from one
// sample to the next; forcing a collection before every sample (runtime.GC,
// then MemStats) would remove that, but stop the run under test at every
// sample. At full speed the collector runs many times between two samples,
// so the figure is fresh; if none ran since the last sample (an idle
// process, a small heap), the reader forces one, so that the figure is
// never older than a sample.
func heapLive() func(context.Context) (float64, error) {
	var last uint64 // collections counted at the previous read
	return func(context.Context) (float64, error) {
		s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/gc/heap/live:bytes"}}
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
			return 0, errors.New("runtime/metrics has no /gc/heap/live:bytes")
		}
		if s[0].Value.Uint64() == last {
			runtime.GC()
			metrics.Read(s)
		}
		last = s[0].Value.Uint64()
		return float64(s[1].Value.Uint64()), nil
	}
}

// openFiles counts the process's open file descriptors (the one that
// lists them included).
func openFiles() (int, error) {
	for _, dir := range []string{"/proc/self/fd", "/dev/fd"} {
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return 0, err
		}
		return len(names), nil
	}
	return 0, errors.New("no /proc/self/fd or /dev/fd")
}

// residentBytes reads the process's resident set size from
// /proc/self/statm (Linux). It holds what the Go heap does not: the
// memory of modernc.org/sqlite's C heap (its page cache) and of goroutine
// stacks.
func residentBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, errors.New("/proc/self/statm: too few fields")
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}
