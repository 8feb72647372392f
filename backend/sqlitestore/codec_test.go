package sqlitestore

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func randomQuotas(rng *rand.Rand) []driver.QuotaState {
	qs := make([]driver.QuotaState, 1+rng.IntN(bucket.MaxQuotas))
	for i := range qs {
		qs[i].Window = 1 + rng.Int64N(int64(bucket.MaxDuration/unit))
		index := rng.Int64N(1 << 40)
		for range rng.IntN(driver.QuotaSlots + 2) {
			qs[i].Slots = append(qs[i].Slots, driver.Slot{Index: index, Count: 1 + rng.Int64N(1<<40)})
			index += 1 + rng.Int64N(1000)
		}
	}
	return qs
}

func sameQuotas(a, b []driver.QuotaState) bool {
	return slices.EqualFunc(a, b, func(x, y driver.QuotaState) bool {
		return x.Window == y.Window && slices.Equal(x.Slots, y.Slots)
	})
}

func TestQuotasRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var buf []byte
	var got []driver.QuotaState
	for range 1000 {
		want := randomQuotas(rng)
		if !quotasUsed(want) {
			continue
		}
		buf = appendQuotas(buf[:0], want)
		var err error
		got, err = decodeQuotas(buf, got)
		require.NoError(t, err, "decodeQuotas(appendQuotas(%v))", want)
		require.True(t, sameQuotas(got, want), "decodeQuotas(appendQuotas(%d quotas)) = %v, want %v", len(want), got, want)
	}
	// A full quota of 1,000/hour: 101 slots of counts below 128.
	q := driver.QuotaState{Window: 3_600_000_000}
	for i := range int64(101) {
		q.Slots = append(q.Slots, driver.Slot{Index: 1_800_000_000 + i, Count: 9})
	}
	assert.LessOrEqual(t, len(appendQuotas(nil, []driver.QuotaState{q})), 420, "bytes of a full quota of 101 slots")
	got, err := decodeQuotas(nil, got)
	assert.NoError(t, err, "decodeQuotas(nil)")
	assert.Empty(t, got, "decodeQuotas(nil)")
}

func FuzzDecodeQuotas(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		f.Add(appendQuotas(nil, randomQuotas(rng)))
	}
	f.Add([]byte{1, 0x80})
	f.Add([]byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		qs, err := decodeQuotas(b, nil)
		if err != nil {
			return
		}
		if !quotasUsed(qs) {
			return
		}
		again, err := decodeQuotas(appendQuotas(nil, qs), nil)
		require.NoError(t, err, "re-decoding decode(%x) = %v", b, qs)
		require.True(t, sameQuotas(again, qs), "decode(%x) = %v, which re-decodes to %v", b, qs, again)
	})
}

func randomLearned(rng *rand.Rand) driver.Learned {
	instant := func() int64 { return rng.Int64N(1<<62) - 1<<61 }
	span := func() int64 { return rng.Int64N(maxSpan + 1) }
	return driver.Learned{
		Interval: span(), Recover: span(), Drop: instant(), DropGen: rng.Int64N(1 << 62),
		Until: instant(), Pace: span(), PaceUntil: instant(),
	}
}

func TestLearnedRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var buf []byte
	for range 1000 {
		want := randomLearned(rng)
		buf = appendLearned(buf[:0], &want)
		var got driver.Learned
		rest, err := decodeLearned(buf, &got)
		require.NoError(t, err, "decodeLearned(appendLearned(%+v))", want)
		require.Equal(t, want, got, "decodeLearned(appendLearned(...))")
		assert.Empty(t, rest, "decodeLearned(appendLearned(...)): the rest")
	}
	// A throttle's record at a Unix µs clock, then quotas.
	l := driver.Learned{Interval: 14_286, Recover: 2_000_000, Drop: 1_700_000_000_000_000, DropGen: 12_345, Until: 1_700_000_060_000_000}
	assert.LessOrEqual(t, len(appendLearned(nil, &l)), 32, "bytes of a throttle's record")
	qs := randomQuotas(rng)
	rest, err := decodeLearned(appendQuotas(appendLearned(nil, &l), qs), new(driver.Learned))
	require.NoError(t, err)
	got, err := decodeQuotas(rest, nil)
	require.NoError(t, err)
	assert.True(t, sameQuotas(got, qs), "the quotas after a record")
	for _, b := range [][]byte{nil, {}, {1}, {2}, {2, 0, 0, 0, 0, 0, 0}, {2, 1, 0, 0, 0, 0, 0, 0}, {2, 0, 0, 0, 1, 0, 0, 0}} {
		_, err := decodeLearned(b, new(driver.Learned))
		assert.ErrorIs(t, err, errBadLearned, "decodeLearned(%x)", b)
	}
	// A program of version 2 finds no quota state of its format.
	_, err = decodeQuotas(appendLearned(nil, &l), nil)
	assert.ErrorIs(t, err, errBadQuotas, "decodeQuotas of a learned record")
}

func FuzzDecodeLearned(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 8 {
		l := randomLearned(rng)
		f.Add(appendLearned(nil, &l))
	}
	f.Add([]byte{2, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l driver.Learned
		rest, err := decodeLearned(b, &l)
		if err != nil {
			return
		}
		var again driver.Learned
		rest2, err := decodeLearned(append(appendLearned(nil, &l), rest...), &again)
		require.NoError(t, err, "re-decoding decode(%x) = %+v", b, l)
		require.Equal(t, l, again, "decode(%x), re-decoded", b)
		require.Equal(t, rest, rest2, "decode(%x)'s rest, re-decoded", b)
		for _, now := range []int64{l.Drop, l.Until, l.PaceUntil} {
			l.Effective(1, maxSpan, now) // never panics
		}
	})
}
