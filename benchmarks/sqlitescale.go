package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/sqlitestore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// sqliteScaleLimit keeps a key's row for an hour after one admission (the
// sweep deletes rows whose bucket is fresh again) and never binds here.
var sqliteScaleLimit = bucket.PerHour(1).WithBurst(10_000)

// sqliteFill creates the file path with one row for each of ks, written
// by AdmitBatch 1,000 keys to a transaction, closes it and returns its
// size in bytes (the store checkpoints its WAL into the file on Close).
func sqliteFill(path string, ks []string) float64 {
	s, err := sqlitestore.Open(path, sqlitestore.Options{})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	lim := backendtest.Limit(sqliteScaleLimit)
	batch := make([]driver.Admission, 0, 1000)
	for i := 0; i < len(ks); i += 1000 {
		batch = batch[:0]
		for _, k := range ks[i:min(i+1000, len(ks))] {
			batch = append(batch, driver.Admission{Request: driver.Request{Key: k, Limit: lim, Cost: 1}})
		}
		s.AdmitBatch(ctx, batch)
		for _, a := range batch {
			if a.Err != nil || !a.Decision.Allowed {
				panic(fmt.Sprintf("AdmitBatch %q = %v, %v", a.Key, a.Decision.Allowed, a.Err))
			}
		}
	}
	if err := s.Close(); err != nil {
		panic(err)
	}
	var size int64
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			size += fi.Size()
		}
	}
	return float64(size)
}

// sqliteAdmitLoop admits one at a time on s for d, walking ks from offset
// in steps of 7919 (so that consecutive admissions are far apart in the
// file), and returns admissions/s.
func sqliteAdmitLoop(s *sqlitestore.Store, ks []string, d time.Duration, offset int) float64 {
	ctx := context.Background()
	req := driver.Request{Limit: backendtest.Limit(sqliteScaleLimit), Cost: 1}
	n := 0
	t0 := time.Now()
	deadline := t0.Add(d)
	for i := offset; time.Now().Before(deadline); i += 7919 {
		req.Key = ks[i%len(ks)]
		if dec, err := s.Admit(ctx, req); err != nil || !dec.Allowed {
			panic(fmt.Sprintf("Admit = %v, %v", dec.Allowed, err))
		}
		n++
	}
	return float64(n) / time.Since(t0).Seconds()
}

// sqliteScale compares one process admitting one at a time on a file that
// holds n keys against the same on a file of 1,000 keys (issue 15: within
// 20%), and reports the file's size per key. No anchor library keeps
// limits in SQLite.
func sqliteScale(n int) func(r *reporter) {
	return func(r *reporter) {
		dir, err := os.MkdirTemp("", "lbbench-sqlite-scale-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		ks := scaleKeys(n)
		bigPath, smallPath := filepath.Join(dir, "many.db"), filepath.Join(dir, "few.db")
		t0 := time.Now()
		bigSize := sqliteFill(bigPath, ks)
		fillRate := float64(n) / time.Since(t0).Seconds()
		smallSize := sqliteFill(smallPath, ks[:1000])
		openStore := func(path string) *sqlitestore.Store {
			s, err := sqlitestore.Open(path, sqlitestore.Options{})
			if err != nil {
				panic(err)
			}
			return s
		}
		big, small := openStore(bigPath), openStore(smallPath)
		defer big.Close()
		defer small.Close()
		rep := 0
		res := repeat(r.reps,
			contender{"many", func() sample {
				rep++
				return sample{"admissions/s": sqliteAdmitLoop(big, ks, sqliteTime, rep*131)}
			}},
			contender{"few", func() sample {
				return sample{"admissions/s": sqliteAdmitLoop(small, ks[:1000], sqliteTime, rep*131)}
			}},
		)
		tp := metricSpec{key: "admissions/s", label: fmt.Sprintf("admissions over %d keys, one at a time", n), unit: "admissions/s", better: "higher",
			target: atLeast(0.8*summarize(res["few"], "admissions/s").Median, "within 20% of 1,000 keys"),
			note:   "one process; the anchor is our own Admit loop on a file of 1,000 keys"}
		r.compare(tp, "sqlitestore Admit", res["many"], "sqlitestore Admit, 1,000 keys", res["few"])
		r.compare(metricSpec{key: "B/key", label: "file size per key", unit: "bytes", better: "lower",
			note: fmt.Sprintf("%d keys admitted once each (AdmitBatch, 1,000 a transaction, %.0f keys/s), file after Close; %.1f B per key with 1,000 keys", n, fillRate, smallSize/1000)},
			"sqlitestore", []sample{{"B/key": bigSize / float64(n)}}, "", nil)
	}
}
