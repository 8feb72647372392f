package memstore

import (
	"context"
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Keys whose hashes collide share a chain: each is found, dropped and
// counted on its own, whichever end of the chain it is at.
func TestShardCollisions(t *testing.T) {
	var sh shard
	sh.m = make(map[uint64]*entry)
	const h = 42
	a, b, c := &entry{key: "a"}, &entry{key: "b"}, &entry{key: "c"}
	for _, e := range []*entry{a, b, c} {
		if sh.get(h, e.key) != nil {
			t.Fatalf("get(%q) before put: found", e.key)
		}
		sh.put(h, e)
	}
	sh.put(h+1, &entry{key: "d"})
	for _, e := range []*entry{a, b, c} {
		if got := sh.get(h, e.key); got != e {
			t.Fatalf("get(%q) = %p, want %p", e.key, got, e)
		}
	}
	if sh.get(h, "d") != nil || sh.get(h+1, "a") != nil {
		t.Fatal("get found a key under another key's hash")
	}
	for _, tc := range []struct {
		drop *entry
		left []*entry
	}{{b, []*entry{a, c}}, {c, []*entry{a}}, {a, nil}} { // middle, head, last
		sh.drop(h, sh.m[h], tc.drop)
		if sh.get(h, tc.drop.key) != nil {
			t.Fatalf("get(%q) after drop: found", tc.drop.key)
		}
		for _, e := range tc.left {
			if sh.get(h, e.key) != e {
				t.Fatalf("after dropping %q, get(%q) lost it", tc.drop.key, e.key)
			}
		}
	}
	if _, ok := sh.m[h]; ok || sh.len() != 1 {
		t.Fatalf("after dropping the whole chain: chain present %v, %d keys, want absent and 1", ok, sh.len())
	}
}

// Sweep forgets fresh buckets anywhere in a chain and keeps the rest.
func TestSweepCollisions(t *testing.T) {
	s, err := New(Options{Shards: 1, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sh := &s.shards[0]
	const h = 7
	busy := &entry{key: "busy"}
	busy.TAT = 1 << 60 // not fresh for decades
	for _, e := range []*entry{{key: "a"}, busy, {key: "c"}, {key: "d"}} {
		sh.put(h, e)
	}
	s.Sweep()
	if s.Len() != 1 || sh.get(h, "busy") != busy {
		t.Fatalf("after Sweep: Len = %d, busy kept = %v; want 1, true", s.Len(), sh.get(h, "busy") == busy)
	}
	for _, k := range []string{"a", "c", "d"} {
		if sh.get(h, k) != nil {
			t.Errorf("after Sweep: fresh %q kept", k)
		}
	}
}

// A decision whose clock is behind the key's latest decision (a batch's
// clock, read before another caller's) is made at the later time: the
// quota slots the later decision forgot must not be missed.
func TestAdmitClockNeverGoesBack(t *testing.T) {
	s, err := New(Options{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lim := bucket.PerSecond(1e9).WithBurst(1e9).WithQuota(2, time.Microsecond)
	req := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	var starts []backendtest.Start
	for _, now := range []int64{0, 900, 2000, 500} {
		var d driver.Decision
		if err := s.admit(&req, now, &d); err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
		}
		if now == 500 && d.Now != 2000 {
			t.Errorf("decision asked at %d made at %d, before the key's latest (2000)", now, d.Now)
		}
	}
	if err := backendtest.Check(lim, starts); err != nil {
		t.Fatal(err)
	}
}

// TestSweepKeepsClockClamp: a batch that read the clock, then waited for
// the shard while another caller admitted the key and a sweep forgot it,
// decides at the time of that admission or later, not at its own earlier
// reading: the starts it books conform with the other caller's.
func TestSweepKeepsClockClamp(t *testing.T) {
	lim := bucket.PerSecond(1000) // 1 ms apart, burst 1
	var (
		s      *Store
		cur    = time.Unix(1_700_000_000, 0)
		stall  = false
		starts []backendtest.Start
	)
	now := func() time.Time {
		read := cur
		if stall { // the batch has read its clock: meanwhile...
			stall = false
			cur = cur.Add(500 * time.Microsecond)
			d, err := s.Admit(context.Background(), driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1})
			if err != nil || !d.Allowed {
				t.Fatalf("the other caller's admission: %+v, %v", d, err)
			}
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
			cur = cur.Add(time.Millisecond) // its bucket is fresh again
			s.Sweep()
		}
		return read
	}
	s, err := New(Options{SweepInterval: -1, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stall = true
	batch := []driver.Admission{{Request: driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}}}
	s.AdmitBatch(context.Background(), batch)
	if a := batch[0]; a.Err != nil || !a.Decision.Allowed {
		t.Fatalf("the batch's admission: %+v, %v", a.Decision, a.Err)
	} else {
		starts = append(starts, backendtest.Start{At: a.Decision.Start(), Cost: 1})
	}
	if err := backendtest.Check(lim, starts); err != nil {
		t.Errorf("starts %v: %v", starts, err)
	}
}
