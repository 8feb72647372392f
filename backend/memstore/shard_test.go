package memstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
		require.Nil(t, sh.get(h, e.key), "get(%q) before put", e.key)
		sh.put(h, e)
	}
	sh.put(h+1, &entry{key: "d"})
	for _, e := range []*entry{a, b, c} {
		require.Same(t, e, sh.get(h, e.key), "get(%q)", e.key)
	}
	require.Nil(t, sh.get(h, "d"), "get found d under another key's hash")
	require.Nil(t, sh.get(h+1, "a"), "get found a under another key's hash")
	for _, tc := range []struct {
		drop *entry
		left []*entry
	}{{b, []*entry{a, c}}, {c, []*entry{a}}, {a, nil}} { // middle, head, last
		sh.drop(h, sh.m[h], tc.drop)
		require.Nil(t, sh.get(h, tc.drop.key), "get(%q) after drop", tc.drop.key)
		for _, e := range tc.left {
			require.Same(t, e, sh.get(h, e.key), "after dropping %q, get(%q)", tc.drop.key, e.key)
		}
	}
	require.NotContains(t, sh.m, uint64(h), "the dropped chain is still mapped")
	require.Equal(t, 1, sh.len(), "keys left after dropping the whole chain")
}

// Sweep forgets fresh buckets anywhere in a chain and keeps the rest.
func TestSweepCollisions(t *testing.T) {
	s, err := New(Options{Shards: 1, SweepInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	sh := &s.shards[0]
	const h = 7
	busy := &entry{key: "busy"}
	busy.TAT = 1 << 60 // not fresh for decades
	for _, e := range []*entry{{key: "a"}, busy, {key: "c"}, {key: "d"}} {
		sh.put(h, e)
	}
	s.Sweep()
	require.Equal(t, 1, s.Len(), "keys after Sweep")
	require.Same(t, busy, sh.get(h, "busy"), "busy key after Sweep")
	for _, k := range []string{"a", "c", "d"} {
		assert.Nil(t, sh.get(h, k), "after Sweep: fresh %q kept", k)
	}
}

// A decision whose clock is behind the key's latest decision (a batch's
// clock, read before another caller's) is made at the later time: the
// quota slots the later decision forgot must not be missed.
func TestAdmitClockNeverGoesBack(t *testing.T) {
	s, err := New(Options{SweepInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	lim := bucket.PerSecond(1e9).WithBurst(1e9).WithQuota(2, time.Microsecond)
	req := driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}
	var starts []backendtest.Start
	for _, now := range []int64{0, 900, 2000, 500} {
		var d driver.Decision
		require.NoError(t, s.admit(&req, now, &d))
		if d.Allowed {
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
		}
		if now == 500 {
			assert.Equal(t, int64(2000), d.Now, "decision asked at 500 made before the key's latest (2000)")
		}
	}
	require.NoError(t, backendtest.Check(lim, starts))
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
			require.NoError(t, err)
			require.True(t, d.Allowed, "the other caller's admission refused")
			starts = append(starts, backendtest.Start{At: d.Start(), Cost: 1})
			cur = cur.Add(time.Millisecond) // its bucket is fresh again
			s.sweep()
		}
		return read
	}
	s, err := New(Options{SweepInterval: -1, Now: now})
	require.NoError(t, err)
	defer s.Close()
	stall = true
	batch := []driver.Admission{{Request: driver.Request{Key: "k", Limit: backendtest.Limit(lim), Cost: 1}}}
	s.AdmitBatch(context.Background(), batch)
	require.NoError(t, batch[0].Err)
	require.True(t, batch[0].Decision.Allowed, "the batch's admission refused")
	starts = append(starts, backendtest.Start{At: batch[0].Decision.Start(), Cost: 1})
	assert.NoError(t, backendtest.Check(lim, starts), "starts %v", starts)
}
