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
